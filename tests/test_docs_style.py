"""The docs describe the software: no work-log dates, session talk, issue numbers or commits."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
WORK_LOG = {
    "a date": r"\b20\d\d-\d\d-\d\d\b",
    "session talk": r"\b(this|last|previous|next) session\b",
    "a day reference": r"\b(earlier |later )?today\b|\byesterday\b",
    "an issue number": r"\bissues? #?\d+\b",
    "a commit": r"\bcommit [0-9a-f]{7,40}\b|\bmain at [0-9a-f]{7,40}\b",
}


def work_log_lines(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in WORK_LOG.items():
            if re.search(pattern, line, flags=re.IGNORECASE):
                found.append(f"{number}: {what}: {line.strip()[:100]}")
    return found


def test_docs_read_as_the_product():
    problems = [f"{page.relative_to(ROOT)}:{line}" for page in PAGES
                for line in work_log_lines(page.read_text())]  # fmt: skip
    assert not problems, "Docs must describe the software, not its history:\n" + "\n".join(problems)


def test_work_log_patterns_catch_the_usual_phrases():
    log = "Seven runs on 2026-11-26 (issue 5), 335 us before this session, 1.3x earlier today"
    assert len(work_log_lines(log)) == 4  # each kind found on the line
    for phrase in ("2026-11-26", "issue 5", "this session", "earlier today", "commit dbb2402"):
        assert work_log_lines(phrase), phrase
    assert not work_log_lines("sessions of training; the issue is the order; a 2-D array")
