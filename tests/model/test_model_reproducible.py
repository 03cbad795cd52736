"""Stages run in separate processes: a random-init model must come out the same in each."""

import subprocess
import sys

import pytest
import torch

from liftplus.model import ModelConfig, build_model


@pytest.mark.slow
def test_random_init_model_is_the_same_in_a_separate_process(tmp_path):
    config = ModelConfig(num_classes=7, seed=3)
    torch.manual_seed(1234)  # the caller's RNG state must not matter
    expected = build_model(config).state_dict()
    out = tmp_path / "weights.pt"
    code = (
        "import sys, torch\n"
        "from liftplus.model import ModelConfig, build_model\n"
        "config = ModelConfig.model_validate_json(sys.argv[2])\n"
        "torch.save(build_model(config).state_dict(), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out), config.model_dump_json()], check=True)
    got = torch.load(out, weights_only=True)
    assert got.keys() == expected.keys()
    assert any(".tuner.adaptformer." in key for key in got)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
