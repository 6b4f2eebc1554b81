"""The demo's synthetic data: task generators (:mod:`.tasks`), the pictures they draw
(:mod:`.images`), the corpus on disk (:mod:`.corpus`) and exact chance baselines
(:mod:`.chance`)."""
