"""The README's demo runs end to end (one short epoch per scheme) and writes TensorBoard logs."""

from lightning_lyapunov.examples import demo


def test_demo_prints_the_comparison_and_the_tensorboard_command(tmp_path, capsys):
    demo.main(["--epochs", "1", "--seeds", "1", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    for label in demo.SCHEMES:
        assert label in out
        assert list((tmp_path / label / "seed0").glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {tmp_path}" in out
