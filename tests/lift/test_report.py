"""The report's critic table: the majority-class warning compares like with like."""

import json

from lift_jax.lift import report


def _rows(counts):
  return [[f"v{i}", dim, "q", f"{label}. reason"]
          for dim, labels in counts.items() for label, n in labels.items() for i in range(n)]


def test_majority_warning_uses_the_rounded_share(tmp_path):
  # 11 of 32 Good: a 34.375 % majority; the summary's accuracy is rounded to 34.38 %.
  data = tmp_path / "hra"
  data.mkdir()
  counts = {"semantic": {"Good": 11, "Normal": 10, "Bad": 11},
            "motion": {"Good": 16, "Bad": 16}}
  (data / "texts.json").write_text(json.dumps({"test": _rows(counts)}))
  summary = tmp_path / "train_summary.json"
  summary.write_text(json.dumps({"eval": {"logits": {"accuracy": {"semantic": 34.38,
                                                                   "motion": 75.0}}}}))
  out = report.write_report(str(tmp_path / "report.html"), config={}, scores_before=None,
                            scores_after=None,
                            extra={"critic": {"summary": str(summary), "data": str(data)}})
  page = open(out, encoding="utf-8").read()
  assert "34.4 % (Good)" in page and "50.0 % (Good)" in page
  assert "does not beat the majority class on semantic:" in page
