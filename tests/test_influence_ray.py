"""The influence index job on the Ray engine (a real local cluster, two actors) writes the same
shards as the local engine, and a rerun finds nothing left to do."""

from __future__ import annotations

import pathlib

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from saliency_fast.influence import index as index_lib
from tests.test_influence_shared_forward import Classifier, load_checkpoint, save_checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ray_engine_writes_the_local_engines_shards(tmp_path):
    ray = pytest.importorskip("ray")
    torch.manual_seed(0)
    model = Classifier().double().eval()
    checkpoints = save_checkpoints(model, tmp_path, {"head"})
    x, y = torch.randn(20, 5, 6, dtype=torch.float64), torch.randint(0, 3, (20,))

    def build(output, **engine):
        return index_lib.build_index(output, model, ["block", "head"], checkpoints, load_checkpoint, len(x),
                                     lambda a, b: ((x[a:b],), y[a:b]), nn.CrossEntropyLoss(reduction="sum"),
                                     data_fingerprint="t", projection_dim=16, fit_rows=8, shard_size=6, batch_size=4,
                                     progress=False, **engine)

    build(tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        build(tmp_path / "ray", engine="ray", actors=2)
        files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("part-*.safetensors"))
        assert len(files) == 3 * 4
        for name in files:
            torch.testing.assert_close(load_file(tmp_path / "ray" / name)["vectors"],
                                       load_file(tmp_path / "local" / name)["vectors"], rtol=1e-6, atol=1e-7)
        (tmp_path / "ray" / files[5]).unlink()  # a lost shard file: the next run writes it again, only it
        kept = {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in files if n != files[5]}
        build(tmp_path / "ray", engine="ray", actors=2)
        assert (tmp_path / "ray" / files[5]).exists()
        assert kept == {n: (tmp_path / "ray" / n).stat().st_mtime_ns for n in kept}
    finally:
        ray.shutdown()
    with pytest.raises(ValueError, match="engine must be one of"):
        build(tmp_path / "other", engine="spark")
