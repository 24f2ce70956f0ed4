"""Each deployment (and each actor it starts) asks Ray for the pool its config names."""

from __future__ import annotations

import pytest


def test_every_role_asks_for_its_pool(tiny_cfg, tiny_bank):
    from cluster.app import build_app
    from cluster.resources import deployment_options
    from configs import load_config

    cfg = load_config("tiny", [
        f"serve.lines.a.bank={tiny_bank}", f"serve.lines.b.bank={tiny_bank}",
        "serve.expert.pool={num_cpus: 0.5, resources: {pool_expert: 1}}",
        "serve.expert.shard_pool={num_cpus: 0.25, resources: {pool_expert: 0.5}}",
        "serve.expert.autoscaling={min_replicas: 1, max_replicas: 3, target_ongoing_requests: 2}",
        "serve.encoder.pool={num_cpus: 1, num_gpus: 0.5, accelerator_type: A100, resources: {pool_encoder: 1}}",
        "serve.llm.pool={num_cpus: 0.1, resources: {pool_llm: 0.1}}",
        "serve.llm.rank_pool={num_cpus: 2, num_gpus: 1, resources: {pool_llm: 1}}",
        "serve.llm.tensor_parallel=2",
        "serve.ingress.pool={num_cpus: 0.25, resources: {pool_ingress: 1}}",
    ])
    opts = deployment_options(build_app(cfg))
    assert set(opts) == {"ingress", "expert-a", "expert-b", "encoder", "llm", "conversations"}
    for line in ("a", "b"):
        expert = opts[f"expert-{line}"]
        assert expert["ray_actor_options"]["resources"] == {"pool_expert": 1}
        assert expert["ray_actor_options"]["num_cpus"] == 0.5
        assert expert["autoscaling_config"].max_replicas == 3
        # The shard actors it starts take the shard pool.
        assert expert["init_args"][3] == {"num_cpus": 0.25, "num_gpus": 0.0, "resources": {"pool_expert": 0.5}}
    enc = opts["encoder"]["ray_actor_options"]
    assert (enc["num_gpus"], enc["accelerator_type"], enc["resources"]) == (0.5, "A100", {"pool_encoder": 1})
    llm = opts["llm"]
    # One placement group per replica: the replica, then one bundle per tensor-parallel rank.
    assert llm["placement_group_bundles"] == [
        {"CPU": 0.1, "pool_llm": 0.1},
        {"CPU": 2, "pool_llm": 1, "GPU": 1}, {"CPU": 2, "pool_llm": 1, "GPU": 1}]
    assert llm["placement_group_strategy"] == "STRICT_PACK"
    assert opts["ingress"]["ray_actor_options"]["resources"] == {"pool_ingress": 1}
    assert opts["ingress"]["num_replicas"] == 1


def test_multiplexed_lines_share_one_deployment(tiny_bank):
    from cluster.app import build_app
    from cluster.resources import deployment_options
    from configs import load_config

    cfg = load_config("tiny", [f"serve.lines.a.bank={tiny_bank}", f"serve.lines.b.bank={tiny_bank}",
                               "serve.expert.multiplex=true", "serve.llm.enabled=false"])
    opts = deployment_options(build_app(cfg))
    assert set(opts) == {"ingress", "expert", "conversations"}


def test_config_errors_are_clear(tiny_bank, tmp_path):
    from cluster.app import build_app
    from cluster.cli import UserError
    from configs import ConfigError, load_config
    from actors.modeling.errors import BankError

    with pytest.raises(UserError, match="serve.lines"):
        build_app(load_config("tiny"))
    with pytest.raises(BankError, match="not a memory bank"):
        build_app(load_config("tiny", [f"serve.lines.a.bank={tmp_path}"]))
    with pytest.raises(ConfigError, match="min_replicas"):
        load_config("tiny", ["serve.expert.autoscaling={min_replicas: 3, max_replicas: 2}"])
    with pytest.raises(ConfigError, match="line ids"):
        load_config("tiny", [f"serve.lines.bad%20id.bank={tiny_bank}"])
    with pytest.raises(RuntimeError, match="no token"):
        build_app(load_config("tiny", [f"serve.lines.a.bank={tiny_bank}", "serve.auth.required=true",
                                       "serve.auth.token_env=MYRIAD_TEST_UNSET_TOKEN"]))


def test_serve_yaml_files_build_the_app(tiny_bank, monkeypatch):
    """configs/serve/*.yaml name the typed builder; their args validate and build."""
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from cluster.app import AppArgs, app_builder
    from cluster.resources import deployment_options

    monkeypatch.setenv("MYRIAD_SERVE_TOKEN", "t")  # small.yaml requires a token
    files = sorted((Path(__file__).parents[2] / "configs" / "serve").glob("*.yaml"))
    assert files
    for path in files:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        (app,) = schema.applications
        assert app.import_path == "cluster.app:app_builder"
        args = AppArgs.model_validate(app.args)
        args.overrides = [o for o in args.overrides if not o.startswith("serve.lines.")]
        args.overrides.append(f"serve.lines.x.bank={tiny_bank}")
        assert "ingress" in deployment_options(app_builder(args))


def test_myriad_serve_user_errors_exit_2(capsys, tmp_path):
    from cluster.cli import main

    assert main(["serve", "--config", "tiny"]) == 2
    assert "serve.lines" in capsys.readouterr().err
    assert main(["serve", "--config", "tiny", "--model", str(tmp_path)]) == 2
    assert "not a Myriad model directory" in capsys.readouterr().err
