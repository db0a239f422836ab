"""The README's demo runs end to end (one short epoch per scheme), writes TensorBoard logs, and its nets
get the verdicts the dashboard shows."""

import pytest

from lightning_lyapunov.examples import demo


def test_demo_prints_the_comparison_and_the_tensorboard_command(tmp_path, capsys):
    demo.main(["--epochs", "1", "--seeds", "1", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    for label in demo.SCHEMES:
        assert label in out
        assert list((tmp_path / label / "seed0").glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {tmp_path}" in out
    assert "verdict he seed 0" not in out and "he seed 0: val MSE" in out and ", verdict collapsed from layer" in out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_he_run_of_the_demo_reads_collapsed(seed, tmp_path):
    # one epoch (16 steps): from step 1 on the biases carry the log-norm from the middle of the net on
    with demo.quiet(callback_output=False):
        result = demo.run("he", seed, 1, tmp_path)
    assert result.label == "collapsed", result.verdicts()
    assert result.before[0] == (0, "vanishing")  # at step 0 (zero biases) the signal vanishes: e^-33
    assert result.exponent == pytest.approx(-0.82, abs=0.15)


def test_lyapunov_seed_0_reads_healthy_and_seed_1_exploded_at_step_1(tmp_path):
    with demo.quiet(callback_output=False):
        good, bad = demo.run("lyapunov", 0, 1, tmp_path), demo.run("lyapunov", 1, 1, tmp_path)
    assert good.label == "healthy" and good.before == []
    # seed 1 (validation MSE 1.75 after 20 epochs) looks healthy at step 0 and after step 2; Adam's
    # first step throws its output to ~e^17 (loss ~1e15), measured at the early steps 1 and 2
    assert bad.label == "healthy" and bad.before[:2] == [(0, "healthy"), (1, "exploding")]
