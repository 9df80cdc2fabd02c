"""``seglab plan``, ``seglab train`` with a plan (fresh, saved, resumed, refused), the run folder's plan.yaml and
the report's Plan part. The planner is replaced by a fake that returns a tiny config at once: these tests are
about the command line and the files, not the rules (tests/plan/test_plan_rules.py)."""

from __future__ import annotations

import json

import pytest

from seglab.config import Config

PLANNED_LR = 0.02
REASONS = {
    "data.kind": "declared by the user",
    "data.crop_size, train.batch_size": "the smallest objects span 6 px at this crop",
    "model.params": "the fastest candidate that fits 40 steps",
    "train.lr": "AdamW at batch 8",
}


class FakePlan:
    """What ``seglab.plan.planner.plan`` returns, as the command line uses it."""

    def __init__(self, config: Config, seconds: float = 12.0) -> None:
        self.config, self.reasons, self.seconds = config, config.plan["reasons"], seconds

    def summary(self) -> str:
        return f"plan for {self.config.data.root}: tiny unet, crop 32, batch 8"

    def to_yaml(self) -> str:
        return "# seglab plan (fake)\n" + self.config.dump()


@pytest.fixture
def planner(monkeypatch):
    """The planner replaced by a fake; returns the list of its calls (data, time limit, keyword arguments)."""
    from seglab.plan import planner as module

    calls = []

    def plan(data, time_limit="10m", **kwargs):
        calls.append((str(data), time_limit, kwargs))
        cfg = Config().override(
            [
                f"data.root={data}",
                "data.kind=microscopy",
                "data.crop_size=32",
                "train.batch_size=8",
                "model.params={depth: 2, base_channels: 4}",
                f"train.lr={PLANNED_LR}",
                "train.epochs=1",
                f"train.time_limit={time_limit}",
                "train.progress=false",
            ]
        )
        cfg.plan = {
            "kind": "microscopy",
            "time_limit": str(time_limit),
            "reasons": dict(REASONS),
            "data": {"root": str(data), "ceiling": {1.0: 1.0, 0.5: 0.981, 0.25: 0.93}},
            "machine": {"device": "cpu", "cores": 2},
        }
        return FakePlan(cfg.validate())

    monkeypatch.setattr(module, "plan", plan)
    return calls


def test_plan_prints_the_summary_and_writes_the_yaml(planner, shapes_dir, tmp_path, run_cli):
    weights = tmp_path / "r18.pth"
    weights.write_bytes(b"x")
    out = tmp_path / "plans" / "p.yaml"
    argv = ["plan", shapes_dir, "--time-limit", "5m", "--kind", "microscopy", "--no-progress"]
    code, stdout, err = run_cli(*argv, "--weights", f"resnet18={weights}", "--out", out)
    assert code == 0, err
    assert f"plan for {shapes_dir}: tiny unet" in stdout and f"seglab train --plan {out}" in stdout
    assert len(stdout.splitlines()) == 2  # the summary and the path: the YAML went to the file
    ((data, limit, kw),) = planner
    assert (data, limit) == (str(shapes_dir), "5m") and kw["kind"] == "microscopy"
    assert kw["weights"] == (f"resnet18={weights}",) and kw["progress"] is False and kw["format"] == "auto"
    saved = Config.load(out)
    assert saved.plan["reasons"] == REASONS and saved.plan["data"]["ceiling"] == {
        1.0: 1.0,
        0.5: 0.981,
        0.25: 0.93,
    }
    assert saved.train.lr == PLANNED_LR and saved.data.kind == "microscopy"
    assert [p.name for p in out.parent.iterdir()] == ["p.yaml"]  # written atomically: no temporary file left

    # without --out the YAML follows the summary on stdout and reads back as the same config
    code, stdout, err = run_cli("plan", shapes_dir, "--no-progress")
    assert code == 0, err
    summary, _, text = stdout.partition("\n")
    assert summary.startswith("plan for") and planner[-1][1] == "10m" and planner[-1][2]["kind"] is None
    assert Config.from_dict(__import__("yaml").safe_load(text)).plan["reasons"] == REASONS

    # an earlier plan is replaced; a file of another kind is not, unless --overwrite
    assert run_cli("plan", shapes_dir, "--out", out, "--no-progress")[0] == 0
    other = tmp_path / "notes.yaml"
    other.write_text("shopping: [milk]\n")
    code, _, err = run_cli("plan", shapes_dir, "--out", other, "--no-progress")
    assert code == 2 and "not a seglab plan" in err and len(err.strip().splitlines()) == 1
    assert other.read_text() == "shopping: [milk]\n"
    assert run_cli("plan", shapes_dir, "--out", other, "--overwrite", "--no-progress")[0] == 0
    assert Config.load(other).plan is not None


def test_a_failed_plan_leaves_the_earlier_file(planner, shapes_dir, tmp_path, run_cli, monkeypatch):
    from seglab.errors import DataError
    from seglab.plan import planner as module

    out = tmp_path / "p.yaml"
    assert run_cli("plan", shapes_dir, "--out", out, "--no-progress")[0] == 0
    before = out.read_text()

    def broken(*args, **kwargs):
        raise DataError("masks/07.png is not a mask")

    monkeypatch.setattr(module, "plan", broken)
    code, _, err = run_cli("plan", shapes_dir, "--out", out, "--no-progress")
    assert code == 2 and err == "seglab: error: masks/07.png is not a mask\n"
    assert out.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["p.yaml"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--weights", "resnet18"], "argument --weights: must be ENCODER=FILE"),
        (["--weights", "=w.pth"], "argument --weights: must be ENCODER=FILE"),
        (
            ["--weights", "resnet18=missing.pth"],
            "weights file 'missing.pth' for encoder resnet18 does not exist",
        ),
        (["--time-limit", "1h30"], "--time-limit '1h30' is ambiguous"),
        (["--time-limit", "0s"], "--time-limit must be a positive, finite duration"),
        (["--kind", "satellite"], "argument --kind: invalid choice: 'satellite'"),
        (["--out", "{data}/plan.yaml"], "lies in the data set"),
    ],
)
def test_bad_plan_flags_are_one_line_and_exit_2(planner, shapes_dir, tmp_path, run_cli, flags, message):
    flags = [f.format(data=shapes_dir) for f in flags]
    code, out, err = run_cli("plan", shapes_dir, *flags, "--no-progress")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""
    assert planner == []  # refused before any measuring


def test_train_with_a_time_limit_plans_and_keeps_the_plan_in_the_run(planner, shapes_dir, tmp_path, run_cli):
    from seglab.reports.report import write_report

    run = tmp_path / "run"
    base = ["train", "--data", shapes_dir, "--time-limit", "60s", "--out", run, "--no-progress"]
    code, out, err = run_cli(*base, "--lr", "0.01")
    assert code == 0, err
    assert len(planner) == 1 and planner[0][1] == "60s" and f"plan for {shapes_dir}: tiny unet" in err
    # --time-limit is the whole command's budget: the 12 s of planning are not trained
    assert "planning took 12 s of the 60s budget; training gets 48 s" in err
    assert "best validation mIoU" in out
    used, planned = Config.load(run / "config.yaml"), Config.load(run / "plan.yaml")
    # config.yaml: what trained (the flag's lr), with the plan and the key the flag changed
    assert used.train.lr == 0.01 and used.train.epochs == 1 and used.model.params["base_channels"] == 4
    assert used.plan["reasons"] == REASONS and used.plan["overridden"] == {"train.lr": PLANNED_LR}
    # plan.yaml: the config as planned, which `train --plan` takes
    assert planned.train.lr == PLANNED_LR and "overridden" not in planned.plan
    assert planned.plan["data"]["ceiling"][0.5] == 0.981 and planned.train.time_limit == 48.0
    assert used.train.time_limit == 48.0 and "train.time_limit" not in used.plan["overridden"]

    # --resume does not plan again: it trains the run's plan.yaml (its data and time limit) with the flags given
    with pytest.warns(UserWarning, match="train.epochs changed from 1 to 2"):
        resume = [
            "train",
            "--out",
            run,
            "--resume",
            "--lr",
            "0.01",
            "--set",
            "train.epochs=2",
            "--no-progress",
        ]
        code, out, err = run_cli(*resume)
    assert code == 0, err
    assert len(planner) == 1 and "resuming with the run's plan" in err
    history = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    assert Config.load(run / "config.yaml").plan["overridden"] == {"train.lr": PLANNED_LR, "train.epochs": 1}

    # the report's model card has the Plan part: kind, time limit, each choice with its value and reason
    r = write_report(run, out=tmp_path / "report", progress=False)
    card = r["model"]["plan"]
    assert card["kind"] == "microscopy" and card["time_limit"] == "60s"
    rows = {tuple(row["keys"]): row for row in card["rows"]}
    crop = rows[("data.crop_size", "train.batch_size")]
    assert (
        crop["values"] == {"data.crop_size": 32, "train.batch_size": 8}
        and crop["reason"] == REASONS["data.crop_size, train.batch_size"]
    )
    assert rows[("train.lr",)]["values"] == {"train.lr": 0.01}
    assert rows[("train.lr",)]["planned"] == {"train.lr": PLANNED_LR}
    assert rows[("train.epochs",)] == {
        "keys": ["train.epochs"],
        "values": {"train.epochs": 2},
        "reason": None,
        "planned": {"train.epochs": 1},
    }
    assert json.loads((tmp_path / "report" / "report.json").read_text())["model"]["plan"] == card
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h3>Plan</h3>" in html and "data kind <b>microscopy</b>, time limit <b>60s</b>" in html
    assert (
        "the smallest objects span 6 px at this crop" in html
        and "(overridden; planned <code>0.02</code>)" in html
    )


def test_no_plan_without_a_time_limit_or_with_no_plan(planner, shapes_dir, run_cli):
    for flags in ([], ["--time-limit", "60s", "--no-plan"]):
        code, out, err = run_cli("train", "--data", shapes_dir, *flags, "--print-config")
        assert code == 0, err
        cfg = Config.from_dict(__import__("yaml").safe_load(out))
        assert cfg.plan is None and cfg.model.params == Config().model.params and "plan:" not in out
    assert planner == []


def test_print_config_shows_the_plan(planner, shapes_dir, tmp_path, run_cli):
    code, out, err = run_cli(
        "train", "--data", shapes_dir, "--time-limit", "60s", "--out", tmp_path / "r", "--print-config"
    )
    assert code == 0, err
    cfg = Config.from_dict(
        __import__("yaml").safe_load(out)
    )  # stdout is the config alone; the summary: stderr
    assert cfg.plan["reasons"] == REASONS and "plan for" in err and not (tmp_path / "r").exists()


def test_a_saved_plan_with_set_on_top(planner, shapes_dir, tmp_path, run_cli):
    saved = tmp_path / "p.yaml"
    assert run_cli("plan", shapes_dir, "--out", saved, "--no-progress")[0] == 0
    code, out, err = run_cli("train", "--plan", saved, "--set", "train.epochs=3", "--print-config")
    assert code == 0, err
    cfg = Config.from_dict(__import__("yaml").safe_load(out))
    assert cfg.train.epochs == 3 and cfg.train.lr == PLANNED_LR and cfg.data.root == str(shapes_dir)
    assert cfg.plan["overridden"] == {"train.epochs": 1} and len(planner) == 1  # loaded, not planned again

    config = tmp_path / "c.yaml"
    config.write_text(Config().dump())
    code, out, err = run_cli("train", config, "--plan", saved, "--print-config")
    assert code == 2 and "not both" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("train", "--plan", saved, "--set", "plan.kind=photo", "--print-config")
    assert code == 2 and "plan is the record of what seglab plan chose" in err


def test_nproc_hands_the_plan_to_the_processes(planner, shapes_dir, tmp_path, run_cli, monkeypatch):
    import seglab.engine.distributed as distributed

    seen = []

    def launch(nproc, argv):
        i = argv.index("--plan")
        seen.append((nproc, argv, Config.load(argv[i + 1])))

    monkeypatch.setattr(distributed, "launch", launch)
    code, _, err = run_cli(
        "train", "--data", shapes_dir, "--time-limit", "60s", "--lr", "0.01", "--nproc", "2"
    )
    assert code == 0, err
    ((nproc, argv, given),) = seen
    assert nproc == 2 and "--nproc" not in argv and "--lr" in argv and len(planner) == 1
    assert given.train.lr == PLANNED_LR and given.plan["reasons"] == REASONS  # the processes apply --lr again

    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each rank would plan on its own: refused
    monkeypatch.setenv("RANK", "1")
    code, _, err = run_cli("train", "--data", shapes_dir, "--time-limit", "60s")
    assert code == 2 and "plan once first" in err and len(planner) == 1
