"""The HTML report of an evaluation: one self-contained file, checked as text and
in a real browser (headless Chromium: every image decodes, no console error, a screenshot)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from spadecam.metrics import auroc_by_kind
from spadecam.report import ReportImage, render_report, write_report

pytestmark = pytest.mark.usefixtures("single_thread")


def _report_kwargs(n_cards: int = 3) -> dict:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(12)].astype(int)
    s = np.r_[rng.normal(1, 0.3, 20), rng.normal(2, 0.5, 12)]
    kinds = ["good"] * 20 + ["scratch"] * 6 + ["spot"] * 6
    cards = [ReportImage(f"test/x{i}.png", float(s[i]), int(y[i]), int(s[i] > 1.5),
                         {"input": rng.random((1, 20, 30)), "reconstruction": rng.random((3, 20, 30)),
                          "ROI": rng.random((20, 30)), "weighted error e'": rng.random((20, 30))})
             for i in range(n_cards)]
    from spadecam.metrics import image_metrics

    return dict(title="a report", labels=y, scores=s, metrics=image_metrics(y, s, 1.5),
                threshold=1.5, threshold_note="set by hand", most_anomalous=cards,
                false_positives=cards[:1], false_negatives=[],
                auroc_by_folder=auroc_by_kind(y, s, kinds), settings={"latent_dim": 8},
                tables={"results": "| method | AUROC |\n|---|---|\n| SPADE | 0.964 |"})


def test_auroc_by_kind_is_each_kind_against_every_normal():
    # normals 0.1, 0.4; kind a: 0.35 beats one of two normals (AUROC 0.5); kind b: 0.8 (1.0)
    got = auroc_by_kind([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["n", "n", "a", "b"])
    assert got == {"a": 0.5, "b": 1.0}


def test_report_is_one_file_without_external_resources():
    page = render_report(**_report_kwargs())
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 + 4 * 4  # two plots; four panels on each of 3 + 1 cards
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    for text in ("Metrics", "ROC", "Scores of normal and anomalous images", "threshold",
                 "set by hand", "False positives", "False negatives", "none: every anomalous",
                 "Model settings", "latent_dim", "scratch", "spot", "<td class=num>0.964</td>"):
        assert text in page, text
    with pytest.raises(ValueError, match="both normal and anomalous"):
        render_report(**{**_report_kwargs(), "labels": np.zeros(32)})


def test_evaluate_writes_the_report_and_auroc_by_folder(tiny_model, tmp_path):
    from spadecam import workflow

    model, folders = tiny_model
    second = tmp_path / "other_defect"
    shutil.copytree(folders["test/defect"], second)
    metrics = workflow.evaluate(model, folders["test/good"], [folders["test/defect"], second],
                                out=tmp_path / "m.json", report=tmp_path / "r.html",
                                progress=False, precision="32")
    assert set(metrics["image_auroc_by_folder"]) == {str(folders["test/defect"]), str(second)}
    assert json.loads((tmp_path / "m.json").read_text())["image_auroc_by_folder"] == (
        metrics["image_auroc_by_folder"])
    page = (tmp_path / "r.html").read_text()
    n = metrics["n_images"]
    assert page.count("<div class=card>") >= min(n, 8)
    assert f"{metrics['image_auroc']:.4f}" in page
    table = page.split("Image AUROC by anomaly kind")[1].split("</table>")[0]
    for folder, value in metrics["image_auroc_by_folder"].items():
        assert f"<th>{folder}</th><td class=num>{value:.4f}</td>" in table
    assert page.count("alt='weighted error e&#x27; of") >= min(n, 8)  # SPADE's four panels


def _browser() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


#: Injected before the report's own content: records image failures and console errors.
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  __errors.push('error: ' + (e.message || (e.target && e.target.src || '').slice(0, 60)));
}, true);
var _ce = console.error;
console.error = function () { __errors.push('console: ' + Array.from(arguments).join(' '));
  _ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute('data-probe', JSON.stringify(
    {images: imgs.length, broken: bad, errors: __errors, width: document.body.scrollWidth}));
});
</script>"""


def test_report_renders_in_a_real_browser(tmp_path):
    """Headless Chromium opens the report: every image decodes (naturalWidth > 0), the console
    has no error, the page is no wider than the window; a screenshot is taken. Under CI
    (SPADECAM_REQUIRE_BROWSER=1, set by .ci/run, which installs Chromium) a missing browser
    fails the test instead of skipping it."""
    browser = _browser()
    if browser is None:
        if os.environ.get("SPADECAM_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found (apt-get install chromium-headless-shell)")
        pytest.skip("no Chromium (apt-get install chromium-headless-shell)")
    page = write_report(tmp_path / "report.html", **_report_kwargs(n_cards=8))
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + _PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
             "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120)
    found = re.search(r"data-probe=\"([^\"]*)\"", dom.stdout)
    assert found, dom.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe["images"] == 2 + 8 * 4 + 4 and probe["broken"] == 0
    assert probe["errors"] == [] and probe["width"] <= 1200
    assert "CONSOLE" not in dom.stderr  # the report has no script: any console line is wrong
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
