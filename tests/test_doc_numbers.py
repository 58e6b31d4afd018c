"""Docs that cannot drift: every number a page attributes to a committed results file is in it.

The convention (CONTRIBUTING.md, "Numbers in the docs"), for README.md, CHANGELOG.md,
CONTRIBUTING.md and docs/*.md:

* A *mention* is a results file named in a page: a path under ``benchmarks/results/`` or a bare
  file name that exists there (``elpv.csv``, ``..._n_classifier_normal.csv``); a ``*``, a
  ``{0,1,2}`` or a path with no extension names every file it matches.
* Its *scope* is the paragraph, list item or table holding it. A list item also has the scope
  of the item it is nested in and of the paragraph that introduces its list (one ending in
  ":"); a paragraph indented under a list item has the item's; a table has the scope of the
  paragraph or item right before it (its caption).
* Every *result* in a scope is in at least one file of that scope, to the digits the page
  gives: 0.922 matches a CSV's 0.921604 and a log's 0.9221, not 0.9231. A result is a number
  with a decimal point, or any number with a unit of time, ratio, rate, share or memory (65 s,
  2 min 46 s, 2.13x, 1,914 img/s, 5.3 GB), a spread after ± included.
* What a file holds: every number it prints (a log's h:mm:ss also as seconds); a CSV also the
  mean and sample sd of each metric over its seeds and the mean over its known classes (what
  the generated tables print); logs also the mean of a quantity they print once per seed or
  class, and the mean of a row of three or more numbers. Minutes and hours are read from a
  file's seconds too, GB and MB from its kbytes or MiB, a percentage from a fraction.
* Not results, never checked: integers without a unit (seeds, counts, sizes, steps), numbers in
  code (fenced blocks, ``inline code``), link targets, HTML comments and the generated blocks
  (``<!-- NAME:begin -->`` .. ``end``, which tests/test_docs.py checks), dimensions
  (``28 × 28``), versions (``0.1's``), differences (a signed number, ``+0.043``, or one next to
  the words of ``_DIFFERENCE``: "by", "adds", "costs", "... below"), and the contexts of
  ``_NOT_A_RESULT``: targets, goals, budgets and a rule's thresholds, published figures.
* A figure from a run no committed file holds (an earlier run, or one whose output was not
  kept) is wrapped in ``<!-- history -->`` .. ``<!-- /history -->``; one worked out by hand
  from a file's numbers (a duration between two of its timestamps, a ratio of two of its
  rates) in ``<!-- derived -->`` .. ``<!-- /derived -->``. Neither is checked, and a span ends
  within its paragraph.
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md",
         *sorted((ROOT / "docs").glob("*.md"))]

# --------------------------------------------------------------------------- the files' values

_FILE_NUMBER = re.compile(r"(?<![\w.:])(\d+):(\d\d)(?::(\d\d))?(\.\d+)?(?![\d:])"
                          r"|(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e[-+]?\d+)?(?!\d|\.\d)")
_LOG_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w.]\d)")
_AGGREGATED = ("seed", "known_class")


def _numbers_in_text(text: str) -> set[float]:
    out = set()
    for m in _FILE_NUMBER.finditer(text):
        if m.group(1) is None:
            try:
                out.add(float(m.group(0).replace(",", "")))
            except ValueError:
                pass
        else:  # m:ss or h:mm:ss(.ff), as seconds, and each part
            a, b, c, frac = m.group(1), m.group(2), m.group(3), m.group(4) or ""
            secs = (int(a) * 3600 + int(b) * 60 + int(c)) if c else (int(a) * 60 + int(b))
            out.add(secs + float("0" + frac))
            out.update(float(x) for x in (a, b, c) if x)
            out.add(float((c or b) + frac))
    return out


def _float(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _csv_values(path: Path) -> set[float]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return set()
    out = {x for r in rows for v in r.values() if v for x in [_float(v)] if x is not None}
    for r in rows:  # numbers inside text cells ("vae_train.lr=0.002")
        for v in r.values():
            if v and _float(v) is None:
                out |= _numbers_in_text(v)
    cols = list(rows[0])

    def numeric(c: str) -> bool:
        return all(_float(r[c]) is not None for r in rows if r[c])

    def metric(c: str) -> bool:
        vals = [r[c] for r in rows if r[c]]
        return (c not in _AGGREGATED and numeric(c)
                and (c in ("auroc", "aupr", "wall_s")
                     or (len(set(vals)) > len(vals) / 2 and any("." in v for v in vals))))

    metrics = [c for c in cols if metric(c)]
    for dropped in (("seed",), ("known_class",), _AGGREGATED):
        if not all(d in cols for d in dropped):
            continue
        key = [c for c in cols if c not in dropped and c not in metrics]
        for m in metrics:
            groups: dict[tuple, list[float]] = defaultdict(list)
            for r in rows:
                x = _float(r[m]) if r[m] else None
                if x is not None:
                    groups[tuple(r[c] for c in key)].append(x)
            for vals in groups.values():
                mean = sum(vals) / len(vals)
                out.add(mean)
                if len(vals) > 1:
                    out.add(math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)))
    if "known_class" in cols and "seed" in cols:  # the tables' Avg: mean over classes of the
        for m in metrics:  # per-class means over seeds
            per: dict[tuple, list[float]] = defaultdict(list)
            key = [c for c in cols if c not in _AGGREGATED and c not in metrics]
            for r in rows:
                if r[m]:
                    per[(tuple(r[c] for c in key), r["known_class"])].append(float(r[m]))
            avg: dict[tuple, list[float]] = defaultdict(list)
            for (k, _), vals in per.items():
                avg[k].append(sum(vals) / len(vals))
            out |= {sum(v) / len(v) for v in avg.values()}
    return out


@functools.cache
def file_values(name: str) -> frozenset[float]:
    """Every number ``benchmarks/results/<name>`` holds or its tables derive (module doc)."""
    path = RESULTS / name
    if path.suffix == ".csv":
        return frozenset(_csv_values(path))
    if path.suffix in (".log", ".txt"):
        return frozenset(_numbers_in_text(path.read_text()))
    return frozenset()  # .npz: arrays, no printed numbers


# --------------------------------------------------------------------------- mentions and scopes

_PATH = re.compile(r"benchmarks/results/\s*([\w*.{},-]*)")
_BARE = re.compile(r"(?<![\w/.*])((?:\.\.\.)?\w[\w*{},.-]*\.(?:csv|log|txt|npz|\*))")


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",")
            for x in _expand(pattern[: m.start()] + alt + pattern[m.end():])]


def _glob(pattern: str, *, path: bool) -> list[str]:
    pattern = pattern.rstrip(".,")
    if pattern.startswith("..."):
        pattern = "*" + pattern[3:]
    if not pattern or pattern == "*":
        return []  # the folder, or all of it: not a file
    names = []
    for p in _expand(pattern):
        if path and "." not in p and not p.endswith("*"):
            p += "*"  # `benchmarks/results/elpv_validation*` style prefix
        names += sorted(f.name for f in RESULTS.glob(p) if f.is_file())
    return names


def mentions(text: str) -> set[str]:
    """The results files a piece of page text names."""
    names = set()
    for m in _PATH.finditer(text):
        names.update(_glob(m.group(1), path=True))
    for m in _BARE.finditer(text):
        names.update(_glob(m.group(1), path=False))
    return names


@dataclass
class Block:
    kind: str  # para, item, table, heading
    indent: int
    line: int  # 1-based, first line
    lines: list[str] = field(default_factory=list)
    scope: set[str] = field(default_factory=set)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


_ITEM = re.compile(r"([*+-]|\d+\.)\s")
_GENERATED = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)
_UNCHECKED = re.compile(r"<!-- (history|derived) -->.*?<!-- /\1 -->", re.S)
_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1\s*$", re.S | re.M)


def _blank(m: re.Match) -> str:
    """The match as spaces, its newlines kept (line numbers stay right)."""
    return re.sub(r"[^\n]", " ", m.group(0))


def blocks(page_text: str) -> list[Block]:
    """The page's paragraphs, list items, tables and headings, each with its scope."""
    text = _FENCE.sub(_blank, page_text)
    out: list[Block] = []
    cur: Block | None = None
    for i, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        indent = len(line) - len(line.lstrip())
        if not s:
            cur = None
            continue
        if s.startswith("#") and indent == 0:
            out.append(Block("heading", 0, i, [s]))
            cur = None
        elif s.startswith("|"):
            if cur is None or cur.kind != "table":
                cur = Block("table", indent, i)
                out.append(cur)
            cur.lines.append(line)
        elif _ITEM.match(s):
            cur = Block("item", indent, i, [line])
            out.append(cur)
        elif cur is not None and cur.kind in ("para", "item"):
            cur.lines.append(line)
        else:
            cur = Block("para", indent, i, [line])
            out.append(cur)
    # scopes, in page order; each block's scope includes what it inherits (module doc)
    for n, b in enumerate(out):
        b.scope = mentions(b.text)
        earlier = out[:n]
        if b.kind == "table":
            if earlier and earlier[-1].kind in ("para", "item"):
                b.scope |= earlier[-1].scope
        elif b.kind == "item" or (b.kind == "para" and b.indent > 0):
            for p in reversed(earlier):
                if p.kind == "heading":
                    break
                if p.kind == "item" and p.indent < b.indent:
                    b.scope |= p.scope  # the item it is nested in (with that one's scope)
                    break
                if p.kind == "para" and p.indent <= b.indent and b.kind == "item":
                    if p.text.rstrip().endswith(":"):
                        b.scope |= p.scope  # the paragraph introducing the list
                    break
                if p.kind == "para" and p.indent < b.indent:
                    break
    return out


# --------------------------------------------------------------------------- the pages' numbers

#: A page's units, and how a file's number is read in each: "" as it is, "min" a file's
#: seconds as minutes too, "h" as hours, "GB" / "MB" a file's kbytes or MiB, "%" a fraction.
_UNITS = {
    "s": "", "sec": "", "seconds": "", "second": "", "ms": "",
    "min": "min", "minutes": "min", "minute": "min", "h": "h", "hours": "h",
    "x": "", "×": "", "img/s": "", "GFLOP/s": "",
    "%": "%", "GB": "GB", "MB": "MB", "MiB": "MB",
}
_UNIT = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
_SEP = r"\s*(?:-|–|to|/)\s*"
_TOKEN = re.compile(
    rf"(?P<min>\d+) min (?P<sec>\d+(?:\.\d+)?) s(?![\w])"
    rf"|(?P<sign>[+\-−±]\s?)?(?P<num>{_NUM})(?P<unit>\s?(?:{_UNIT})(?![\w/]))?")
#: Differences (what is compared, not what was measured): the words right before a number,
#: or right after it.
_DIFFERENCE = re.compile(
    r"(?:\bby|\badds?|\badded|\bcosts?|\bloses?|\blost|\bgains?|\bsubtracts?|\bwithin|\bdrops?"
    r"|\brose|\bfell)\s+(?:about\s+|only\s+|more than\s+|less than\s+|at most\s+|at least\s+"
    r"|up to\s+)?$")
_DIFFERENCE_AFTER = re.compile(r"\s*(?:below|above|higher|lower|worse|better|slower|faster)\b")
#: Numbers that are not results although they sit next to a results file: what was aimed at
#: (targets, goals, budgets, a rule's thresholds), published figures, versions.
_NOT_A_RESULT = re.compile(
    r"(?:\btargets?|\bgoals?|\bbudget|≥|>=|≤|<=|\bthreshold|\bmore than|\bless than|\bunder"
    r"|\bover|\bnear"
    r"|\btorch|\bversion|\bspadecam|\bPython|\barXiv)\s*(?:of\s+|is\s+|was\s+|==\s*)?$"
    r"|(?:\bpaper(?:'s)?|\bpublished|\bDRA(?:'s)?|\bAHL(?:'s)?|\bDevNet(?:'s)?|\bKDAD)"
    r"(?:\s+(?:CNN's|SPADE|figure|reports?))?\s*$",
    re.I)
_NOT_A_RESULT_AFTER = re.compile(r"\s*(?:goals?|targets?|quantile)\b")
_VERSION_AFTER = re.compile(r"^(?:'s\b|\.\d)")  # 0.1's demo, 2.13.0


@dataclass(frozen=True)
class Number:
    text: str
    value: float
    decimals: int
    unit: str  # how a file's numbers are read: a value of _UNITS
    line: int


def _strip(text: str) -> str:
    """Page text with what holds no results blanked: code spans, link targets, comments."""
    text = _UNCHECKED.sub(_blank, text)
    text = re.sub(r"<!--.*?-->", _blank, text, flags=re.S)
    text = re.sub(r"`[^`]*`", _blank, text)
    text = re.sub(r"\]\([^)]*\)", _blank, text)
    return text


def numbers(block_text: str, first_line: int = 1) -> list[Number]:
    """The results a block states (module doc: a decimal, or a number with a unit)."""
    text = _strip(block_text)
    found: list[Number] = []
    ms = list(_TOKEN.finditer(text))

    def signed(i: int) -> bool:  # "+0.043", "−0.004", "(±0.03)": a difference; not the
        sign = ms[i].group("sign")  # range "0.07-0.10" nor the spread "0.922 ± 0.001"
        after_number = r"[\d.]\s*$" if sign and "±" in sign else r"[\d.]$"
        return bool(sign) and not re.search(after_number, text[: ms[i].start()])

    def joined(i: int) -> bool:  # ms[i] continues a range or list: "0.07-0.10", "0.92 / 0.90"
        gap = text[ms[i - 1].end(): ms[i].start()]
        return i > 0 and (re.fullmatch(_SEP, gap) is not None or (gap == "" and not signed(i)))

    for j, m in enumerate(ms):
        line = first_line + text.count("\n", 0, m.start())
        if m.group("min"):
            secs = int(m.group("min")) * 60 + float(m.group("sec"))
            dec = len(m.group("sec").partition(".")[2])
            found.append(Number(m.group(0), secs, dec, "", line))
            continue
        raw = m.group("num")
        before, after = text[: m.start("num")], text[m.end():]
        if re.search(r"[\w.]$", before) or _VERSION_AFTER.match(after):
            continue  # part of a name or a version
        unit = (m.group("unit") or "").strip()
        if unit in ("x", "×") and re.match(r"\s?\d", after):
            continue  # a dimension, 28 × 28
        first = last = j  # the range or list the number is in
        while first > 0 and joined(first):
            first -= 1
        while last + 1 < len(ms) and joined(last + 1):
            last += 1
        if not unit and last > j:  # a range's unit: "173-177 s", "5-6 %"
            unit = (ms[last].group("unit") or "").strip()
        if "." not in raw.partition("e")[0] and not unit:
            continue  # an integer without a unit: a count, seed or size
        head = text[max(0, ms[first].start() - 60): ms[first].start()]
        tail = text[ms[last].end(): ms[last].end() + 40]
        if (signed(first) or _DIFFERENCE.search(head) or _DIFFERENCE_AFTER.match(tail)
                or _NOT_A_RESULT.search(head) or _NOT_A_RESULT_AFTER.match(tail)):
            continue
        mantissa, _, exp = raw.partition("e")
        dec = len(mantissa.partition(".")[2]) - int(exp or 0)
        found.append(Number(text[m.start("num"): m.end()].strip(),
                            float(raw.replace(",", "")), dec, _UNITS.get(unit, ""), line))
    return found


def _candidates(value: float, unit: str) -> list[float]:
    if unit == "min":
        return [value, value / 60]
    if unit == "h":
        return [value, value / 3600]
    if unit == "GB":
        return [value, value / 1e6, value / 2**20, value / 1024]
    if unit == "MB":
        return [value, value / 1e3, value / 1024]
    if unit == "%":
        return [value, value * 100]
    return [value]


@functools.cache
def repeat_means(names: frozenset[str]) -> frozenset[float]:
    """The mean of every quantity the logs ``names`` print more than once: a quantity is the
    line's label (before its first ":" or "|", its numbers masked) and the word before the
    number (and its place in a run of numbers after that word), so "seed 0 ...: frozen 0.977" and
    "seed 1 ...: frozen 0.972" are one quantity, printed per seed; and the mean of a run of
    three or more numbers on a line (a table row's mean over its columns)."""
    seen: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    means: set[float] = set()
    for name in sorted(names):
        if Path(name).suffix not in (".log", ".txt"):
            continue
        for line in (RESULTS / name).read_text().splitlines():
            label = _LOG_NUMBER.sub("#", re.split(r"[:|]", line, maxsplit=1)[0].strip())
            word, k, end, runs = "", 0, 0, [[]]
            for m in _LOG_NUMBER.finditer(line):
                x = float(m.group(0).replace(",", ""))
                gap = line[end: m.start()].strip(" |,;:()=")
                if gap:
                    word, k = gap.split()[-1], 0
                    runs.append([])
                else:
                    k += 1
                seen[(label, word, k)].append(x)
                runs[-1].append(x)
                end = m.end()
            means.update(sum(r) / len(r) for r in runs if len(r) > 2)
    return frozenset(means | {sum(v) / len(v) for v in seen.values() if len(v) > 1})


@functools.cache
def scope_values(names: frozenset[str], unit: str) -> tuple[float, ...]:
    """Sorted: every value the files ``names`` hold, converted to a page's ``unit``."""
    values = set().union(*(file_values(name) for name in names), repeat_means(names))
    return tuple(sorted({c for v in values for c in _candidates(v, unit)}))


def found_in(n: Number, names: set[str]) -> bool:
    """Whether a file of ``names`` holds ``n`` to the page's digits."""
    tol = 0.5 * 10 ** -n.decimals + 1e-9
    values = scope_values(frozenset(names), n.unit)
    i = bisect.bisect_left(values, n.value - tol)
    return i < len(values) and values[i] <= n.value + tol


def marker_problems(page_text: str) -> list[str]:
    """Unpaired ``<!-- history -->`` / ``<!-- derived -->`` markers, and spans that run past
    their paragraph (a blank line) and so could hide more than the figure they mark."""
    out = []
    for m in re.finditer(r"<!-- (/?)(history|derived) -->", page_text):
        line = page_text.count("\n", 0, m.start()) + 1
        if m.group(1):
            opening = page_text.rfind(f"<!-- {m.group(2)} -->", 0, m.start())
            inner = page_text[opening: m.start()]
            if opening < 0 or f"<!-- /{m.group(2)} -->" in inner:
                out.append(f"line {line}: a closing {m.group(2)} marker with no opening one")
            elif re.search(r"\n\s*\n", inner):
                out.append(f"line {line}: a {m.group(2)} span crosses a blank line")
        else:
            rest = page_text[m.end():]
            close, reopen = rest.find(f"<!-- /{m.group(2)} -->"), rest.find(m.group(0))
            if close < 0 or 0 <= reopen < close:
                out.append(f"line {line}: a {m.group(2)} marker that is not closed")
    return out


def unsupported(page_text: str) -> list[str]:
    """'line N: number (files)' for every result not in any results file of its scope."""
    text = _GENERATED.sub(_blank, page_text)
    out = []
    for b in blocks(text):
        if not b.scope or b.kind == "heading":
            continue
        for n in numbers(b.text, b.line):
            if not found_in(n, b.scope):
                out.append(f"line {n.line}: {n.text} (not in {', '.join(sorted(b.scope))})")
    return out


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_number_attributed_to_a_results_file_is_in_it(page):
    bad = unsupported(page.read_text())
    assert not bad, (f"{page.relative_to(ROOT)}: numbers not in the results files named "
                     "beside them (fix the page from the file, name the right file, or mark "
                     "an earlier run's figure <!-- history --> .. <!-- /history -->):\n"
                     + "\n".join(bad))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_history_and_derived_markers_are_paired_within_a_paragraph(page):
    assert marker_problems(page.read_text()) == []


def test_a_stray_marker_is_reported():
    assert len(marker_problems("a <!-- history -->0.880 before\n\nand 0.1<!-- /history -->")) == 1
    assert len(marker_problems("a <!-- derived -->0.880 and 0.9")) == 1
    assert len(marker_problems("0.880<!-- /history --> <!-- history -->1<!-- /history -->")) == 1
    assert marker_problems("<!-- history -->0.880<!-- /history --> <!-- derived -->1 s"
                           "<!-- /derived -->") == []


def test_a_number_absent_from_the_file_named_is_reported():
    page = ("The SPADE row (`benchmarks/results/elpv.csv`) scores 0.852 on average and 0.123\n"
            "on the unknown kind, in 65 s.\n")
    bad = unsupported(page)
    assert len(bad) == 2 and "0.123" in bad[0] and "65 s" in bad[1], bad


def test_a_table_is_checked_against_the_file_of_its_caption():
    page = ("Per seed (`noisy_mnist.csv`):\n\n| method | AUROC |\n|---|---|\n"
            "| SPADE | 0.962 |\n| SPADE | 0.777 |\n")
    assert [b.split(":")[1].split()[0] for b in unsupported(page)] == ["0.777"]


def test_list_items_take_the_files_of_the_paragraph_that_introduces_them():
    page = ("Measured (`benchmarks/results/elpv_3seeds.log`):\n\n* seed 0 took 28 s\n"
            "* and 0.999 somewhere\n  continued 0.858\n")
    bad = unsupported(page)
    assert len(bad) == 1 and "0.999" in bad[0], bad


def test_what_is_not_a_result_is_not_checked():
    page = ("From `elpv.csv`: target 0.95, missed by 0.028, +0.043 over it, `0.777`, seed 3,\n"
            "a 28 × 28 grid, torch 2.11, the paper's 0.88, <!-- history -->0.880 before the "
            "bank<!-- /history -->; 2,624 cells.\n")
    assert unsupported(page) == []


def test_ranges_and_lists_are_read_whole():
    assert [n.text for n in numbers("0.07-0.10, 173-177 s, 0.92 / 0.90, 0.922 ± 0.001")] == [
        "0.07", "0.10", "173", "177 s", "0.92", "0.90", "0.922", "0.001"]
    assert [n.unit for n in numbers("3-4 min")] == ["min", "min"]
    # what comes before the first number and after the last holds for all of them
    assert numbers("adds 0.07-0.10; the 0.92 / 0.90 goals; (±0.03); −0.001 to −0.004") == []


def test_rounding_is_to_the_pages_digits():
    n = numbers("0.922 and 0.92 and 1.0 s")
    assert [(x.value, x.decimals, x.unit) for x in n] == [(0.922, 3, ""), (0.92, 2, ""),
                                                          (1.0, 1, "")]
    assert found_in(numbers("0.852")[0], {"elpv.csv"})  # a mean over seeds, from 6 digits
    assert not found_in(numbers("0.8521")[0], {"elpv.csv"})
