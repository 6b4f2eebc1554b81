"""Two CPU processes (gloo, FSDP2) train exactly like one process with the same global batch,
and stay in step through corrupt, missing, empty and over-long samples."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from mm15.train.loop import train
from tests.train_fixtures import distributed_worker, free_port, train_config, write_corpus


@pytest.mark.timeout(300) if hasattr(pytest.mark, "timeout") else (lambda f: f)
def test_two_process_fsdp2_matches_one_process(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, bad=True)
    torch.set_num_threads(1)
    single = train(train_config(corpus, tmp_path / "single", steps=3, strategy="fsdp2")).losses
    out = tmp_path / "losses.json"
    mp.spawn(
        distributed_worker,
        args=(2, free_port(), str(corpus), str(tmp_path / "dist"), str(out)),
        nprocs=2,
        join=True,
    )
    double = json.loads(out.read_text())
    assert list(double) == list(single)
    for stage in single:
        assert len(double[stage]) == len(single[stage]) == 3
        for a, b in zip(single[stage], double[stage], strict=True):
            assert abs(a - b) < 1e-5, (stage, single[stage], double[stage])
    audit = json.loads((tmp_path / "dist" / "audit_pretrain.json").read_text())
    assert audit["skipped"], "the injected bad samples were drawn and counted"
