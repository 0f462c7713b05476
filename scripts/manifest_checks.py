"""Checks of Kubernetes manifests shared by scripts/check-deploy.sh and
scripts/check-chart.sh (run with the venv they make: PyYAML, jsonschema).

  manifest_checks.py kubernetes-validate VERSION FILE...
      kubernetes-validate --strict of FILEs against Kubernetes VERSION, where
      a kind it has no schema for fails unless its group is in CRD_GROUPS
  manifest_checks.py custom-resources GROUP CRD_DIR FILE...
      every object of API group GROUP in FILEs validates against the CRDs
      in CRD_DIR (GROUP_*.yaml), unknown fields refused; at least one is found
  manifest_checks.py command-lines BINARY FILE...
      every hostpath-csi container's command line in FILEs is accepted by
      BINARY (or the binary its `command` names, found beside BINARY)
  manifest_checks.py same-objects [--kind=KIND] RENDER KUSTOMIZATION_DIR...
      the objects of RENDER (a `helm template` output) are those the
      kustomizations build, but for the labels Helm adds (with --kind, only
      the objects of that kind, on both sides)
  manifest_checks.py monitors-select FILE...
      every PodMonitor in FILEs selects the pods of a workload in the same
      FILE and namespace that has a container port of its endpoints' name
  manifest_checks.py lease-names FILE...
      the Roles of FILEs (one set of manifests) let the Leases be read and
      updated by name only, and name exactly those the controller's
      containers use: csi-resizer's and the node loss cleanup's, from the
      driver name their command lines give
"""

import difflib
import glob
import os
import re
import subprocess
import sys

import yaml


def documents(paths):
    """(path, object) for every non-empty YAML document of the files."""
    for path in paths:
        with open(path) as file:
            for doc in yaml.safe_load_all(file):
                if doc:
                    yield path, doc


# The API groups of the custom resources deploy/ and the chart hold, whose
# kinds kubernetes-validate has no schema for: the snapshot objects (checked
# by `snapshots` instead) and the Prometheus Operator's (deploy/monitoring).
CRD_GROUPS = ("snapshot.storage.k8s.io", "monitoring.coreos.com")


def kubernetes_validate(version, *files):
    # kubernetes-validate only warns of a kind it has no schema for (and
    # exits 0): a misspelt kind would pass unchecked.
    program = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    run = subprocess.run([program, "--strict", "--quiet", "-k", version, *files], capture_output=True, text=True)
    output = (run.stdout + run.stderr).splitlines()
    groups = "|".join(re.escape(group) for group in CRD_GROUPS)
    crd_kind = re.compile(rf"Couldn't find schema for kind \w+ with api version ({groups})/")
    problems = [line for line in output if not crd_kind.search(line)]
    if problems:
        print("\n".join(problems), file=sys.stderr)
    if any("Couldn't find schema" in line for line in problems):
        print("(a kind of a custom resource: add its group to CRD_GROUPS in scripts/manifest_checks.py)", file=sys.stderr)
    if run.returncode != 0 or problems:
        sys.exit(f"kubernetes-validate --strict -k {version}: failed")


def custom_resources(group, crd_dir, *files):
    # kubernetes-validate knows no custom resources: the objects of GROUP
    # are checked against the CRDs of the release that serves them (the
    # snapshot objects: the external-snapshotter the DaemonSet's
    # csi-snapshotter comes from; the monitoring ones: the Prometheus
    # Operator's).
    import jsonschema

    # Some enums of the Prometheus Operator's CRDs hold a bare `=`, YAML
    # 1.1's "value" tag.
    yaml.SafeLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_scalar)
    schemas = {}
    for path in glob.glob(f"{crd_dir}/{group}_*.yaml"):
        with open(path) as file:
            crd = yaml.safe_load(file)
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = go_patterns(version["schema"]["openAPIV3Schema"])

    def unknown(value, schema, at):
        """Fields the schema does not declare, in objects and in lists of them."""
        if isinstance(value, dict) and "properties" in schema:
            for key, inner in value.items():
                if key not in schema["properties"]:
                    if key != "metadata" or at:
                        yield f"{at}.{key}"
                else:
                    yield from unknown(inner, schema["properties"][key], f"{at}.{key}")
        elif isinstance(value, list) and "items" in schema:
            for i, inner in enumerate(value):
                yield from unknown(inner, schema["items"], f"{at}[{i}]")

    kinds = []
    for path, doc in documents(files):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key[0] and key[0].startswith(f"{group}/"):
            if key not in schemas:
                sys.exit(f"{path}: no CRD for {key}")
            jsonschema.validate(doc, schemas[key])
            extra = list(unknown(doc, schemas[key], ""))
            if extra:
                sys.exit(f"{path}: unknown fields {extra}")
            kinds.append(key[1])
    print(f"{len(kinds)} {group} objects valid ({', '.join(sorted(kinds))})")
    if not kinds:
        sys.exit(f"no {group} object found in {' '.join(files)}")


def go_patterns(schema):
    """The schema with Go's `^(?i)...` patterns as Python's re takes them:
    `(?i)^...`."""
    if isinstance(schema, dict):
        return {
            key: "(?i)^" + value[5:]
            if key == "pattern" and isinstance(value, str) and value.startswith("^(?i)")
            else go_patterns(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [go_patterns(value) for value in schema]
    return schema


# The driver's image, whatever its registry and tag: hostpath-csi:0.1.0,
# registry.example.com/hostpath-csi:v1, e2e.local/hostpath-csi:dev.
DRIVER_IMAGE = re.compile(r"^([^/]+/)*hostpath-csi([:@]|$)")


def command_lines(binary, *files):
    checked = 0
    for path, doc in documents(files):
        spec = doc.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec", {}) if "template" in spec else spec
        for container in pod.get("containers", []) or []:
            if not DRIVER_IMAGE.match(container.get("image", "")):
                continue
            # $(VAR) is expanded by the kubelet from the container's env; a
            # field reference gets a value of the kind the kubelet would put.
            sample = {"spec.nodeName": "node-1", "status.podIP": "192.0.2.7"}
            env = {
                e["name"]: sample.get(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), e.get("value", ""))
                for e in container.get("env", [])
            }
            args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container.get("args", [])]
            # A container with a command runs that binary of the image, found
            # beside the one given (the Dockerfile puts them together).
            command = container.get("command") or [binary]
            program = os.path.join(os.path.dirname(binary), os.path.basename(command[0]))
            # --help last: clap rejects any unknown or malformed flag before it.
            run = subprocess.run([program, *command[1:], *args, "--help"], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{path}: {container['name']}: {run.stderr.strip()}")
            checked += 1
    print(f"{checked} hostpath-csi command lines accepted")
    if checked == 0:
        sys.exit(f"no hostpath-csi container found in {' '.join(files)}")


# Kinds without a namespace (kustomize's `namespace:` leaves them alone).
CLUSTER_KINDS = {
    "Namespace", "CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "VolumeSnapshotClass", "PersistentVolume", "PriorityClass", "CustomResourceDefinition",
}
# What Helm charts conventionally add to every object's labels.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}


def kustomize(directory):
    """The objects a plain kustomization (resources and namespace only) makes."""
    with open(os.path.join(directory, "kustomization.yaml")) as file:
        kustomization = yaml.safe_load(file)
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    if unsupported:
        sys.exit(f"{directory}/kustomization.yaml: {sorted(unsupported)} not understood here")
    namespace = kustomization.get("namespace")
    paths = [os.path.join(directory, r) for r in kustomization.get("resources", [])]
    for _, doc in documents(paths):
        if namespace:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = namespace
            elif doc["kind"] not in CLUSTER_KINDS:
                doc["metadata"]["namespace"] = namespace
        yield doc


def key(doc):
    meta = doc.get("metadata", {})
    return (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace", ""), meta.get("name"))


def without_helm_labels(doc):
    meta = doc.get("metadata", {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in HELM_LABELS}
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    return doc


def same_objects(render, *directories):
    kind = None
    if render.startswith("--kind="):
        kind, render, directories = render.removeprefix("--kind="), directories[0], directories[1:]

    def wanted(doc):
        return kind is None or doc["kind"] == kind

    expected = {}
    for directory in directories:
        for doc in filter(wanted, kustomize(directory)):
            expected[key(doc)] = doc
    if kind and not expected:
        sys.exit(f"no {kind} in {' + '.join(directories)}")
    rendered = {}
    for _, doc in documents([render]):
        if not wanted(doc):
            continue
        if key(doc) in rendered:
            sys.exit(f"{render}: {key(doc)} rendered twice")
        rendered[key(doc)] = without_helm_labels(doc)
    problems = []
    for k in sorted(set(expected) - set(rendered), key=str):
        problems.append(f"missing from the chart: {'/'.join(filter(None, k))}")
    for k in sorted(set(rendered) - set(expected), key=str):
        problems.append(f"only in the chart: {'/'.join(filter(None, k))}")
    for k in sorted(set(expected) & set(rendered), key=str):
        if expected[k] != rendered[k]:
            want = yaml.safe_dump(expected[k], sort_keys=True).splitlines()
            got = yaml.safe_dump(rendered[k], sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(want, got, "kustomize", "helm", lineterm=""))
            problems.append(f"differs: {'/'.join(filter(None, k))}\n{diff}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(f"the chart's default render differs from {' + '.join(directories)} ({len(problems)} objects)")
    print(f"{len(rendered)} {kind or 'object'}s, the same as {' + '.join(directories)} (Helm's labels aside)")


def monitors_select(*files):
    count = 0
    for path in files:
        docs = [doc for _, doc in documents([path])]
        pods = [
            (doc["metadata"].get("namespace"), doc["spec"]["template"])
            for doc in docs
            if doc["kind"] in ("DaemonSet", "Deployment", "StatefulSet")
        ]
        for monitor in (doc for doc in docs if doc["kind"] == "PodMonitor"):
            where = f"{path}: PodMonitor {monitor['metadata']['name']}"
            selector = monitor["spec"]["selector"].get("matchLabels", {})
            namespace = monitor["metadata"].get("namespace")
            matched = [
                template
                for ns, template in pods
                if ns == namespace and selector and selector.items() <= template["metadata"].get("labels", {}).items()
            ]
            if not matched:
                sys.exit(f"{where}: selects no pods of this render in namespace {namespace}")
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                for template in matched:
                    ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                    if endpoint["port"] not in ports:
                        sys.exit(f"{where}: its pods have no port named {endpoint['port']}")
            count += 1
    print(f"{count} PodMonitors, each selecting pods with its port")
    if count == 0:
        sys.exit(f"no PodMonitor in {' '.join(files)}")


# The driver name hostpath-csi and hostpath-csi-node-loss take without
# --driver-name (src/cli.rs DEFAULT_DRIVER_NAME).
DEFAULT_DRIVER_NAME = "hostpath-csi.dev"


def lease_names(*files):
    docs = [doc for _, doc in documents(files)]
    wanted = set()
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        containers = doc["spec"]["template"]["spec"]["containers"]
        names = {
            arg.split("=", 1)[1]
            for c in containers
            if DRIVER_IMAGE.match(c.get("image", ""))
            for arg in c.get("args", [])
            if arg.startswith("--driver-name=")
        }
        if len(names) > 1:
            sys.exit(f"Deployment {doc['metadata']['name']}: driver names differ: {sorted(names)}")
        driver = names.pop() if names else DEFAULT_DRIVER_NAME
        for c in containers:
            # csi-resizer's lock (its cmd/csi-resizer: SanitizeName, which
            # makes a dash of each dot of a valid driver name).
            if "--leader-election" in c.get("args", []) and "resizer" in c["name"]:
                wanted.add("external-resizer-" + driver.replace(".", "-"))
            # The cleanup's (src/node_loss Settings::lease_name).
            if os.path.basename((c.get("command") or [""])[0]) == "hostpath-csi-node-loss":
                wanted.add(driver.replace(".", "-") + "-node-loss")
    if not wanted:
        sys.exit(f"no container that holds a Lease in {' '.join(files)}")
    named = set()
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules", []):
            if "coordination.k8s.io" not in rule.get("apiGroups", []) or "leases" not in rule.get("resources", []):
                continue
            if set(rule["verbs"]) - {"create"} and not rule.get("resourceNames"):
                sys.exit(f"{doc['kind']} {doc['metadata']['name']}: {rule['verbs']} of every Lease")
            named |= set(rule.get("resourceNames", []))
    if named != wanted:
        sys.exit(f"Leases named in Roles {sorted(named)}, used {sorted(wanted)}")
    print(f"Leases {', '.join(sorted(wanted))}: each by name only")


if __name__ == "__main__":
    commands = {"kubernetes-validate": kubernetes_validate, "custom-resources": custom_resources, "command-lines": command_lines, "same-objects": same_objects, "monitors-select": monitors_select, "lease-names": lease_names}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
