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
  manifest_checks.py node-plugins FILE...
      in each FILE (one set of manifests), no node can run two node plugin
      DaemonSets, and where poolsByNodeLabel groups are rendered, a node
      that would run the main one runs its group's instead when labelled
      for a group, each with that group's pools
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


# The pod label of a poolsByNodeLabel group's node plugin (the chart's
# templates/_node-daemonset.tpl).
POOL_GROUP_LABEL = "hostpath-csi.dev/pool-group"
# Sample label values: one no expression names, and none at all.
OTHER, ABSENT = "some-other-value", None


def requirement_met(requirement, value):
    """A node selector requirement against a node's value for its key."""
    operator, values = requirement["operator"], requirement.get("values", [])
    if operator == "In":
        return value in values
    if operator == "NotIn":
        return value not in values
    if operator == "Exists":
        return value is not ABSENT
    if operator == "DoesNotExist":
        return value is ABSENT
    sys.exit(f"node selector operator {operator} is not handled here")


def admits(pod, node):
    """Whether the pod spec's nodeSelector and required node affinity admit
    the node ({"labels": {...}, "name": ...}), as the scheduler decides."""
    labels = node["labels"]
    if any(labels.get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    # A term is met when all its requirements are; an empty term never is.
    return any(
        (term.get("matchExpressions") or term.get("matchFields"))
        and all(requirement_met(r, labels.get(r["key"])) for r in term.get("matchExpressions") or [])
        and all(requirement_met(r, node["name"]) for r in term.get("matchFields") or [])
        for term in required["nodeSelectorTerms"]
    )


def node_plugins(*files):
    import itertools

    for path in files:
        plugins = {}
        for _, doc in documents([path]):
            if doc["kind"] != "DaemonSet":
                continue
            pod = doc["spec"]["template"]["spec"]
            for c in pod["containers"]:
                if DRIVER_IMAGE.match(c.get("image", "")) and c.get("args", [])[:1] == ["serve"]:
                    pools = [a.split("=")[1] for a in c["args"] if a.startswith("--pool=")]
                    group = doc["spec"]["template"]["metadata"].get("labels", {}).get(POOL_GROUP_LABEL)
                    plugins[doc["metadata"]["name"]] = (pod, pools, group)
        main = [name for name, (_, _, group) in plugins.items() if group is None]
        if len(main) != 1:
            sys.exit(f"{path}: {len(main)} node plugin DaemonSets without a pool group, not 1")
        # Every label value the pods' node constraints name, and two more.
        seen = {}
        for pod, _, _ in plugins.values():
            for k, v in (pod.get("nodeSelector") or {}).items():
                seen.setdefault(("label", k), set()).add(v)
            required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}
            for term in required.get("nodeSelectorTerms", []):
                for where, field in (("label", "matchExpressions"), ("field", "matchFields")):
                    for r in term.get(field) or []:
                        seen.setdefault((where, r["key"]), set()).update(r.get("values", []))
        keys = sorted(seen)
        choices = [sorted(seen[k]) + [OTHER] + ([ABSENT] if k[0] == "label" else []) for k in keys]
        nodes = []
        for combination in itertools.product(*choices):
            labels = {k: v for (where, k), v in zip(keys, combination) if where == "label" and v is not ABSENT}
            name = next((v for (where, _), v in zip(keys, combination) if where == "field"), OTHER)
            nodes.append({"labels": labels, "name": name})
        # The label the groups' DaemonSets require (`In [group]` in each term).
        group_key = None
        for pod, _, group in plugins.values():
            if group is None:
                continue
            terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            keys_of_terms = [
                {r["key"] for r in t.get("matchExpressions") or [] if r["operator"] == "In" and r.get("values") == [group]}
                for t in terms
            ]
            common = set.intersection(*keys_of_terms)
            if len(common) != 1 or group_key not in (None, *common):
                sys.exit(f"{path}: pool group {group}'s DaemonSet does not require one label to be {group} in every term")
            group_key = common.pop()
        for node in nodes:
            running = [name for name, (pod, _, _) in plugins.items() if admits(pod, node)]
            if len(running) > 1:
                sys.exit(f"{path}: a node {node} would run {running}")
            if group_key is None:
                continue
            unlabelled = {"labels": {k: v for k, v in node["labels"].items() if k != group_key}, "name": node["name"]}
            if not admits(plugins[main[0]][0], unlabelled):
                continue
            value = node["labels"].get(group_key)
            expected = next((name for name, (_, _, g) in plugins.items() if g is not None and g == value), main[0])
            if running != [expected]:
                sys.exit(f"{path}: a node {node} would run {running}, not {expected}")
        groups = ", ".join(f"{g}: {','.join(pools)}" for _, (_, pools, g) in plugins.items() if g is not None)
        print(
            f"{os.path.basename(path)}: {len(plugins)} node plugin DaemonSets; each of {len(nodes)} kinds of node runs"
            f" at most one" + (f", a node labelled {group_key} its group's ({groups})" if group_key else "")
        )


if __name__ == "__main__":
    commands = {"kubernetes-validate": kubernetes_validate, "custom-resources": custom_resources, "command-lines": command_lines, "same-objects": same_objects, "monitors-select": monitors_select, "lease-names": lease_names, "node-plugins": node_plugins}
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
