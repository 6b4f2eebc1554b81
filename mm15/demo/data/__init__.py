"""The demo's synthetic data: task generators (:mod:`.tasks`; each sample drawn by
:mod:`.pretrain_builders` or :mod:`.sft_builders` as a :mod:`.drafts` ``Draft``), the pictures
they draw (:mod:`.images`), the corpus on disk (:mod:`.corpus`) and exact chance baselines
(:mod:`.chance`)."""
