#!/usr/bin/env bash
# Checks deploy/ (system.deploy) without a container builder or a Kubernetes cluster, neither of which this machine
# has (Debian 12's podman/buildah need a debian:12 base image from a registry this machine cannot reach):
#  1. deploy/Dockerfile starts FROM debian:12, everything it COPYs exists, its RUN lines are valid shell, it runs
#     scripts/setup.sh and installs the built binary on PATH;
#  2. deploy/mpijob.yaml is valid YAML for Kubeflow's MPIJob v2beta1: the launcher runs `stride launch` over the
#     operator's hostfile, -n equals workers x slotsPerWorker, every flag before `--` is a `stride launch` flag and
#     every flag after it a `stride train` flag (checked against the binary's own --help), and the run directory
#     is on a volume every pod mounts.
set -euo pipefail
STRIDE=$1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export STRIDE ROOT
/usr/bin/python3 - <<'PY'
import os, re, subprocess, sys, yaml
root, stride = os.environ["ROOT"], os.environ["STRIDE"]
fail = []

# 1. Dockerfile
lines, cur = [], ""
for raw in open(f"{root}/deploy/Dockerfile"):
    raw = raw.rstrip("\n")
    if not cur and (not raw.strip() or raw.lstrip().startswith("#")):
        continue
    cur += raw[:-1] + " " if raw.endswith("\\") else raw
    if not raw.endswith("\\"):
        lines.append(cur.strip()); cur = ""
ins = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
if ins[0] != ("FROM", "debian:12"): fail.append(f"Dockerfile starts with {ins[0]}, not FROM debian:12")
runs = [a for i, a in ins if i == "RUN"]
for r in runs:
    rc = subprocess.run(["bash", "-n", "-c", r]).returncode
    if rc: fail.append(f"Dockerfile RUN is not valid shell: {r}")
for i, a in ins:
    if i == "COPY":
        src = a.split()[:-1]
        for s in src:
            if not os.path.exists(os.path.join(root, s)): fail.append(f"Dockerfile COPY {s}: no such path")
if not any("bash scripts/setup.sh" in r for r in runs): fail.append("Dockerfile does not run scripts/setup.sh")
if not any("build/stride /usr/local/bin/stride" in r for r in runs): fail.append("Dockerfile does not install stride")

# 2. MPIJob
job = yaml.safe_load(open(f"{root}/deploy/mpijob.yaml"))
if (job.get("apiVersion"), job.get("kind")) != ("kubeflow.org/v2beta1", "MPIJob"):
    fail.append(f"mpijob.yaml is {job.get('apiVersion')} {job.get('kind')}")
spec = job["spec"]
launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
worker_spec = spec["mpiReplicaSpecs"]["Worker"]
cmd = launcher["containers"][0]["command"]
if cmd[:2] != ["stride", "launch"]: fail.append(f"launcher runs {cmd[:2]}, not stride launch")
sep = cmd.index("--")
launch_args, train_args = cmd[2:sep], cmd[sep + 1:]
def arg(args, name): return args[args.index(name) + 1]
if arg(launch_args, "--hostfile") != "/etc/mpi/hostfile": fail.append("launch does not use the operator's hostfile")
ranks = worker_spec["replicas"] * spec["slotsPerWorker"]
if int(arg(launch_args, "-n")) != ranks: fail.append(f"-n {arg(launch_args, '-n')} but workers hold {ranks} slots")
def flags(sub):
    out = subprocess.run([stride, sub, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z0-9-]+|-[a-z])\b", out))
for sub, args in (("launch", launch_args), ("train", train_args)):
    known = flags(sub)
    for a in args:
        if a.startswith("-") and a not in known: fail.append(f"`stride {sub}` has no flag {a}")
out_dir = arg(train_args, "--output-dir")
for name, pod in (("Launcher", launcher), ("Worker", worker_spec["template"]["spec"])):
    mounts = [m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])]
    if not any(out_dir.startswith(m.rstrip("/") + "/") for m in mounts):
        fail.append(f"{name} pods do not mount the run directory {out_dir}")

for f in fail: print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
echo "deploy: Dockerfile and MPIJob checked"
