import os

from runner.escapes import strip_escapes
from runner.metrics import MetricsTail, parse_metrics_line, parse_trainer_line


def test_strip_escapes_removes_terminal_control():
    hostile = ("ok\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;Zm9v\x07\x1bP+q\x1b\\"
               "\x9b31mred\x07\x08end\n")
    clean = strip_escapes(hostile)
    assert "\x1b" not in clean and "\x07" not in clean and "\x9b" not in clean
    assert clean == "okredend\n"
    assert strip_escapes("a\tb\nc") == "a\tb\nc"
    assert strip_escapes("10%\r50%\rdone") == "done"


def test_metrics_lines():
    assert parse_metrics_line('{"step": 3, "values": {"loss": 0.5, "bad": "x", "nan": NaN}}') == {
        "step": 3, "values": {"loss": 0.5}}
    assert parse_metrics_line("not json") is None
    assert parse_metrics_line('{"values": {}}') is None
    assert parse_trainer_line("{'loss': 0.41, 'learning_rate': 1e-05, 'epoch': 0.5}") == {
        "step": None, "values": {"loss": 0.41, "learning_rate": 1e-05, "epoch": 0.5}}
    assert parse_trainer_line("{'__import__(\"os\")': 1}") is None
    assert parse_trainer_line("loss 0.3") is None


def test_metrics_tail_follows_and_refuses_symlinks(tmp_path):
    ws = tmp_path / "ws"
    (ws / ".mlrb").mkdir(parents=True)
    f = ws / ".mlrb" / "metrics.jsonl"
    tail = MetricsTail(ws, ".mlrb/metrics.jsonl")
    assert tail.read() == []
    f.write_text('{"step": 1, "values": {"loss": 1}}\n{"step": 2, "val')
    assert [m["step"] for m in tail.read()] == [1]
    with f.open("a") as fh:
        fh.write('ues": {"loss": 0.9}}\ngarbage\n')
    assert [m["step"] for m in tail.read()] == [2]
    assert tail.rejected == 1
    secret = tmp_path / "secret"
    secret.write_text('{"step": 9, "values": {"leak": 1}}\n')
    f.unlink()
    os.symlink(secret, f)
    assert MetricsTail(ws, ".mlrb/metrics.jsonl").read() == []
