"""docs/architecture.md stays true to the code: the files it names exist, and the stop order it gives is
STOP_ORDER's (issue 17: a newcomer finds the payment path in one pass, so the page must not drift)."""

from __future__ import annotations

import pathlib
import re

from bridge.service.daemon import STOP_ORDER

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_every_file_the_page_names_exists():
    named = set(re.findall(r"`((?:bridge/|tests/)?[a-z_]+/[a-z_/]*\.py)", DOC))
    assert len(named) > 10
    missing = [name for name in sorted(named)
               if not (ROOT / name).exists() and not (ROOT / "bridge" / name).exists()]
    assert missing == []


def test_the_stop_order_on_the_page_is_the_daemons():
    sentence = re.search(r"Its stop order is written once, in `STOP_ORDER`:\s*(.+?)\. Drivers", DOC, re.S).group(1)
    words = " ".join(sentence.split())
    assert [part.strip() for part in words.split(",")] == list(STOP_ORDER)
