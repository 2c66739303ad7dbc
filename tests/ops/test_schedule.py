"""`activedet schedule`: request building and the KFP client calls, with a fake client passed in."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from activedet.cli import schedule as cli
from activedet.errors import ActivedetError, ConfigError
from activedet.ops import schedule as ops
from activedet.ops.cron import CronError


class FakeKfp:
    """Records calls; same method names and keywords as kfp.Client."""

    def __init__(self, pages=None):
        self.calls: list[tuple[str, dict]] = []
        self.pages = pages or [SimpleNamespace(recurring_runs=[], next_page_token="")]

    def create_experiment(self, name, description=None, namespace=None):
        self.calls.append(("create_experiment", {"name": name}))
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def create_recurring_run(self, **kw):
        self.calls.append(("create_recurring_run", kw))
        return SimpleNamespace(recurring_run_id="rr-1")

    def list_recurring_runs(self, page_token="", page_size=10, sort_by="", experiment_id=None, namespace=None, filter=None):
        self.calls.append(("list_recurring_runs", {"page_token": page_token, "experiment_id": experiment_id, "namespace": namespace}))
        return self.pages[int(page_token or 0)]

    def delete_recurring_run(self, recurring_run_id):
        self.calls.append(("delete_recurring_run", {"recurring_run_id": recurring_run_id}))
        return {}


def _rr(i, name=None):
    return SimpleNamespace(recurring_run_id=f"rr-{i}", display_name=name or f"job-{i}", status="ENABLED",
                           trigger=SimpleNamespace(cron_schedule=SimpleNamespace(cron="0 0 2 * * *")),
                           max_concurrency=1, no_catchup=True)


@pytest.fixture
def package(tmp_path) -> Path:
    p = tmp_path / "continuous.yaml"
    p.write_text("pipelineSpec: {}\n")
    return p


def test_build_request_converts_cron_and_defaults(package):
    req = ops.build_request(name="nightly", cron="0 2 * * *", package_path=package, params={"a": "1"})
    assert req.cron_expression == "0 0 2 * * *"
    assert req.max_concurrency == 1 and req.no_catchup is True and req.experiment_name == "nightly"
    assert ops.build_request(name="n", cron="@daily", package_path=package, params={}, catchup=True).no_catchup is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cron": "0 25 * * *"}, CronError, "hour field"),
        ({"name": "Bad_Name"}, ConfigError, "DNS-1123"),
        ({"max_concurrency": 0}, ConfigError, "max_concurrency"),
        ({"package_path": "/no/such/pipeline.yaml"}, ActivedetError, "compiled pipeline not found"),
    ],
)
def test_build_request_rejects(package, kwargs, error, match):
    args = {"name": "nightly", "cron": "0 2 * * *", "package_path": package, "params": {}, **kwargs}
    with pytest.raises(error, match=match):
        ops.build_request(**args)


def test_create_schedule_client_calls(package):
    client = FakeKfp()
    req = ops.build_request(name="nightly", cron="30 1 * * MON-FRI", package_path=package, params={"experiment": "{}"},
                            experiment="activedet")
    assert ops.create_schedule(client, req) == "rr-1"
    (name0, exp_kw), (name1, kw) = client.calls
    assert name0 == "create_experiment" and exp_kw == {"name": "activedet"}
    assert name1 == "create_recurring_run"
    assert kw["experiment_id"] == "exp-activedet" and kw["job_name"] == "nightly"
    assert kw["cron_expression"] == "0 30 1 * * 1-5"
    assert kw["max_concurrency"] == 1 and kw["no_catchup"] is True and kw["enabled"] is True
    assert kw["pipeline_package_path"] == str(package) and kw["params"] == {"experiment": "{}"}


def test_list_follows_pages_and_delete():
    rr = _rr
    client = FakeKfp(pages=[SimpleNamespace(recurring_runs=[rr(0), rr(1)], next_page_token="1"),
                            SimpleNamespace(recurring_runs=[rr(2)], next_page_token="")])
    listed = ops.list_schedules(client)
    assert [r["id"] for r in listed] == ["rr-0", "rr-1", "rr-2"] and listed[0]["cron"] == "0 0 2 * * *"
    ops.delete_schedule(client, "rr-1")
    assert client.calls[-1] == ("delete_recurring_run", {"recurring_run_id": "rr-1"})


def test_cli_create_compiles_and_schedules(tmp_path, package, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: nightly-exp\ndataset: {uri: s3://b/ds}\ninitial_size: 2\nbudget: 2\ncycles: 1\n")
    seen = {}

    def compiler(config_path, out_dir):
        seen["config"] = config_path
        return package, {"experiment": "{}", "state_root": "s3://b/state"}

    client = FakeKfp()
    args = argparse.Namespace(config=str(cfg), cron="0 2 * * *", host="http://kfp", name=None, experiment=None,
                              max_concurrency=1, catchup=False, namespace=None)
    assert cli.create(args, client=client, compiler=compiler) == 0
    kw = client.calls[-1][1]
    assert kw["job_name"] == "nightly-exp-continuous" and kw["cron_expression"] == "0 0 2 * * *"
    assert kw["params"]["state_root"] == "s3://b/state" and seen["config"] == str(cfg)
    assert '"recurring_run_id": "rr-1"' in capsys.readouterr().out


def test_cli_bad_cron_exit_2_without_contacting_server(tmp_path, capsys):
    from activedet.cli.main import main

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("dataset: {uri: s3://b/ds}\ninitial_size: 2\nbudget: 2\ncycles: 1\n")
    assert main(["schedule", str(cfg), "--cron", "0 2 * *", "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 fields" in err[0]


def test_unreachable_host_is_one_line_exit_2(capsys):
    from activedet.cli.main import main

    assert main(["schedule", "list", "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in err[0]


def test_schedule_replaces_recurring_runs_of_the_same_name(package):
    """A chart upgrade re-runs the schedule Job: afterwards one recurring run has the name (issue 19)."""
    client = FakeKfp(pages=[SimpleNamespace(recurring_runs=[_rr(7, "nightly"), _rr(8, "other"), _rr(9, "nightly")],
                                            next_page_token="")])
    req = ops.build_request(name="nightly", cron="0 2 * * *", package_path=package, params={}, experiment="activedet",
                            namespace="kubeflow-user-a", service_account="pipeline-runner")
    new_id, replaced = ops.replace_schedule(client, req)
    assert new_id == "rr-1" and replaced == ["rr-7", "rr-9"]
    names = [c[0] for c in client.calls]
    assert names.index("create_recurring_run") < names.index("delete_recurring_run")  # new one first
    assert [c[1]["recurring_run_id"] for c in client.calls if c[0] == "delete_recurring_run"] == ["rr-7", "rr-9"]
    listed = next(kw for name, kw in client.calls if name == "list_recurring_runs")
    assert listed["experiment_id"] == "exp-activedet" and listed["namespace"] == "kubeflow-user-a"
    created = next(kw for name, kw in client.calls if name == "create_recurring_run")
    assert created["service_account"] == "pipeline-runner"


def test_delete_by_name_is_what_uninstall_runs(capsys):
    client = FakeKfp(pages=[SimpleNamespace(recurring_runs=[_rr(1, "nightly"), _rr(2, "keep")], next_page_token="")])
    args = argparse.Namespace(host="http://kfp", namespace="team", recurring_run_id=None, name="nightly")
    assert cli.delete(args, client=client) == 0
    assert client.calls[-1] == ("delete_recurring_run", {"recurring_run_id": "rr-1"})
    assert '"deleted": ["rr-1"]' in capsys.readouterr().out


def test_delete_needs_id_or_name(capsys):
    from activedet.cli.main import main

    assert main(["schedule", "delete", "--host", "http://127.0.0.1:9"]) == 2
    assert "--name NAME" in capsys.readouterr().err
