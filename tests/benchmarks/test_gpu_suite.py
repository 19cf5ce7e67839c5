"""benchmarks/gpu_suite.py: the plan (--dry-run) and every stage at tiny size on CPU (--cpu-smoke),
so that the one-command GPU suite cannot rot between GPU sessions."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_suite  # noqa: E402

STAGES = ["env", "pytest_gpu", "contrastive", "fused_kd", "train_step", "train_step_remat", "host_jpeg"]


def test_dry_run_prints_the_full_plan_within_the_budget(capsys):
    assert gpu_suite.main(["--dry-run"]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert list(lines) == STAGES
    assert "-m gpu" in lines["pytest_gpu"] and "tests/kernels/test_pallas_distill.py" in lines["pytest_gpu"]
    assert all(w in lines["contrastive"] for w in ("--impl reference chunked pallas", "--loss softmax sigmoid",
                                                    "--dim 512", "--start 16384", "bfloat16"))
    assert "2048,1024,32768,float32" in lines["fused_kd"] and "8192,1024,131072,float32" in lines["fused_kd"]
    for stage, remat in (("train_step", "--remat off"), ("train_step_remat", "--remat on")):
        assert all(w in lines[stage] for w in ("configs/clip_vit_b16.py ", "--batch 256 --per_device",
                                               "--impls chunked,pallas", remat))
    assert all(w in lines["host_jpeg"] for w in ("benchmarks/jpeg_scaling.py", "--workers 1,2,4,8,16"))
    stages = gpu_suite.plan(smoke=False)
    assert sum(s.timeout_s for s in stages) <= 550 < 9.5 * 60  # the stages' limits; the suite's budget is 550 s
    with pytest.raises(SystemExit):
        gpu_suite.main(["--dry-run", "--stages", "nope"])


def test_cpu_smoke_runs_every_stage_and_writes_one_report(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_suite.py"), "--cpu-smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["log.txt", "report.json", "report.md"]  # <= 8 files, one folder
    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == STAGES
    assert all(r["status"] == "ok" for r in report["stages"].values())
    data = {name: r.get("data") for name, r in report["stages"].items()}
    assert data["env"]["backend"] == "cpu" and data["env"]["packages"]["jax"] != "missing"
    assert data["contrastive"]["largest_batch"]["softmax/chunked"] == 128
    assert "skipped" in data["contrastive"]["results"]["sigmoid"]["64"]["pallas"]  # no Pallas on CPU: said so
    fused_rows = data["fused_kd"]["results"][0]["rows"]
    assert fused_rows["rows"]["wall_ms"] > 0 and "skipped" in fused_rows["pallas"]
    assert data["train_step"]["variants"]["chunked"]["step_ms"] > 0
    assert data["train_step_remat"]["variants"]["chunked+remat"]["step_ms"] > 0
    assert "skipped" in data["train_step"]["variants"]["pallas"]
    host = data["host_jpeg"]["results"]
    assert {(r["how"], r["kind"], r["workers"]) for r in host.values()} == {
        (how, kind, n) for how in ("threads", "processes") for kind in ("bare", "pipeline") for n in (1,)}
    assert all(r["images_per_cpu_s"] > 0 for r in host.values()) and data["host_jpeg"]["model"]["cores"] == 16
    markdown = (out / "report.md").read_text()
    assert all(f"## {name}" in markdown for name in STAGES[:1] + STAGES[2:])
