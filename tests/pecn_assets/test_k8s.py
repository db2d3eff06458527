"""Kubernetes scale-out: step pod specs built by dagster-k8s's own code, and the deploy/ files.

Step pods are assembled as `K8sStepHandler` does it: the run launcher's `run_k8s_config` (from the
Helm values) merged with the step's `dagster-k8s/config` op tag, then `construct_dagster_k8s_job`.
No cluster is needed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import pg_url_from_config
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job,
                             get_user_defined_k8s_config)

from pecn_assets import gpu
from pecn_ml.deployment import Deployment

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GPU_ASSETS = {"pacnet", "progress_estimates", "ip2p_model", "evaluation"}
CHART_RUN_K8S_KEYS = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                      "podTemplateSpecMetadata": "pod_template_spec_metadata",
                      "jobSpecConfig": "job_spec_config", "jobMetadata": "job_metadata"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pecn_assets.definitions import defs

    return defs


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def launcher_run_k8s_config(values) -> dict:
    """runK8sConfig of the values, with the top-level keys the chart renames (see its template)."""
    raw = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    return {CHART_RUN_K8S_KEYS[k]: v for k, v in raw.items()}


def step_job(op_tags: dict, run_k8s_config: dict | None = None):
    """The Kubernetes Job of one step, as the k8s_job_executor would create it."""
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config or {}))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job_config = DagsterK8sJobConfig(job_image="registry.example.com/pecn:test",
                                     dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="pecn-dagster-instance",
                                     image_pull_policy="IfNotPresent")
    return construct_dagster_k8s_job(job_config, args=["dagster", "api", "execute_step"],
                                     job_name="dagster-step-test", component="step_worker",
                                     user_defined_k8s_config=context.run_k8s_config)


def gpu_limit(job) -> object:
    limits = job.spec.template.spec.containers[0].resources.limits or {}
    return limits.get(gpu.GPU_RESOURCE)


# --- pod specs of the real assets --------------------------------------------------------------

def test_gpu_steps_request_one_gpu_and_cpu_steps_none(defs, launcher_run_k8s_config):
    checked = set()
    for node in defs.resolve_asset_graph().asset_nodes:
        if not node.is_materializable:
            continue
        key = node.key.to_user_string()
        job = step_job(defs.get_assets_def(key).op.tags, launcher_run_k8s_config)
        pod = job.spec.template.spec
        if key in GPU_ASSETS:
            assert int(gpu_limit(job)) == 1, key
            requests = pod.containers[0].resources.requests
            assert requests["cpu"] and requests["memory"], key
        else:
            assert gpu_limit(job) is None, f"CPU asset {key} requests a GPU"
        # From the Helm values, kept after the merge with the op tags:
        assert job.spec.backoff_limit == 0, key
        assert pod.security_context.fs_group == 1000, key
        checked.add(key)
    assert GPU_ASSETS < checked


def test_training_steps_request_one_gpu_per_training_process(launcher_run_k8s_config):
    """PECN_TRAIN_PROCESSES=2: ip2p_model and pacnet pods ask for 2 GPUs, the other GPU steps 1."""
    from pecn_assets.build import build_definitions

    two = build_definitions(Deployment.from_env({"PECN_PROFILE": "full", "PECN_TRAIN_PROCESSES": "2"}))
    for key in GPU_ASSETS:
        job = step_job(two.get_assets_def(key).op.tags, launcher_run_k8s_config)
        assert int(gpu_limit(job)) == (2 if key in {"ip2p_model", "pacnet"} else 1), key
    with pytest.raises(ValueError, match="PECN_TRAIN_PROCESSES='0'"):
        Deployment.from_env({"PECN_TRAIN_PROCESSES": "0"})


def test_gpu_node_selector_and_tolerations_come_from_the_deployment(defs):
    plain = step_job({gpu.K8S_CONFIG_TAG: json.dumps(gpu.gpu_k8s_config())}).spec.template.spec
    assert not plain.node_selector and not plain.tolerations

    selector = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment = Deployment.from_env({"PECN_K8S_GPU_NODE_SELECTOR": json.dumps(selector),
                                      "PECN_K8S_GPU_TOLERATIONS": json.dumps(tolerations),
                                      "PECN_K8S_GPU_MEMORY": "60Gi"})

    @dg.asset(name="gpu_standin", **gpu.gpu_asset_args(1, deployment))  # what a GPU asset gets at load time
    def gpu_standin() -> None: ...

    job = step_job(gpu_standin.op.tags)
    pod = job.spec.template.spec
    assert pod.node_selector == selector
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert int(gpu_limit(job)) == 1
    assert pod.containers[0].resources.requests["memory"] == "60Gi"

    cpu = step_job(defs.get_assets_def("frame_cache").op.tags).spec.template.spec  # GPU steps only
    assert not cpu.node_selector and not cpu.tolerations


@pytest.mark.parametrize("name, value, problem", [
    ("PECN_K8S_GPU_NODE_SELECTOR", "{gpu: yes}", "not valid JSON"),
    ("PECN_K8S_GPU_NODE_SELECTOR", '["a"]', "must be a JSON dict"),
    ("PECN_K8S_GPU_NODE_SELECTOR", '{"pool": 3}', "must be strings"),
    ("PECN_K8S_GPU_TOLERATIONS", '{"key": "x"}', "must be a JSON list"),
    ("PECN_K8S_GPU_TOLERATIONS", '["x"]', "must be a JSON object"),
])
def test_bad_gpu_environment_fails_naming_the_variable(name, value, problem):
    with pytest.raises(ValueError, match=problem) as info:
        Deployment.from_env({name: value})
    assert name in str(info.value)


def test_definitions_run_on_the_k8s_executor_when_asked(tmp_path):
    code = ("from pecn_assets.definitions import defs; "
            "print(defs.resolve_implicit_global_asset_job_def().executor_def.name); "
            "print(defs.resolve_job_def('sweep_train').executor_def.name)")
    path = os.pathsep.join(os.path.abspath(p or os.getcwd()) for p in sys.path)  # this session's imports
    env = {**os.environ, "PECN_EXECUTOR": "k8s", "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["k8s", "k8s"]


# --- deploy/ files ------------------------------------------------------------------------------

def test_every_yaml_file_parses():
    files = [*DEPLOY.rglob("*.yaml"), REPO / "dagster_home" / "dagster.yaml"]
    assert len(files) >= 4
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_cluster_instance_config_is_valid_for_dagster(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "secret")
    config, custom_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert custom_class is None
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    storage = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert storage.success, storage.errors
    url = pg_url_from_config(storage.value)  # what the storage would connect to (env resolved)
    assert url.startswith("postgresql+psycopg2://dagster:secret@pecn-postgresql:5432/dagster")
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_laptop_instance_config_is_valid_for_dagster():
    config, _ = dagster_instance_config(str(REPO / "dagster_home"), "dagster.yaml")
    assert config["concurrency"]["pools"]["granularity"] == "op"


def test_helm_values_and_cluster_instance_agree(values):
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8"))
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    assert values["concurrency"]["enabled"]
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert pools["granularity"] == instance["concurrency"]["pools"]["granularity"] == "op"
    assert runs["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    monitoring, retries = values["dagsterDaemon"]["runMonitoring"], values["dagsterDaemon"]["runRetries"]
    assert monitoring["enabled"] and instance["run_monitoring"]["enabled"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert monitoring["maxResumeRunAttempts"] == instance["run_monitoring"]["max_resume_run_attempts"] > 0
    assert retries["maxRetries"] == instance["run_retries"]["max_retries"]
    assert retries["retryOnAssetOrOpFailure"] is instance["run_retries"]["retry_on_asset_or_op_failure"] is False
    pg, db = values["postgresql"], instance["storage"]["postgres"]["postgres_db"]
    assert (pg["postgresqlHost"], pg["postgresqlUsername"], pg["postgresqlDatabase"]) == \
        (db["hostname"], db["username"], db["db_name"])
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert launcher["jobSpecConfig"]["backoffLimit"] == 0
    assert instance["run_launcher"]["config"]["run_k8s_config"]["job_spec_config"]["backoff_limit"] == 0
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_helm_values_deploy_the_project_image_with_the_k8s_executor(values):
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pecn_assets.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["PECN_EXECUTOR"] == "k8s" and env["PECN_PROFILE"] == "full"
    chosen = Deployment.from_env(env)  # what the code server will read
    assert chosen.executor == "k8s" and chosen.k8s_gpu_node_selector and chosen.k8s_gpu_tolerations
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "WORKDIR /mnt/pecn" in dockerfile and "/mnt/pecn" in mounts  # relative data paths land on the volume
    assert "download.pytorch.org/whl/cu" in dockerfile and "pip install -c constraints.txt ." in dockerfile
    # the image installs from the lock, which the build context must carry
    assert "COPY constraints.txt" in dockerfile and "--no-deps -c constraints.txt" in dockerfile
    assert "!constraints.txt" in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()


def test_gpu_pool_rbac_lets_the_code_server_list_nodes(values):
    """The gpu_pool_size sensor runs in the code server and lists nodes: the ClusterRoleBinding's
    subject is the user deployment's service account, in the namespace the runs go to."""
    role, binding = yaml.safe_load_all((DEPLOY / "k8s" / "gpu-pool-rbac.yaml").read_text(encoding="utf-8"))
    assert role["kind"] == "ClusterRole" and binding["roleRef"]["name"] == role["metadata"]["name"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
    account = values["dagster-user-deployments"]["serviceAccount"]
    [subject] = binding["subjects"]
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8"))
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account["name"]) and account["create"]
    assert subject["namespace"] == instance["run_launcher"]["config"]["job_namespace"]
