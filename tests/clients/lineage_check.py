"""`[lineage]` and `--metrics-file` with real consumers: a local OpenLineage receiver (an HTTP
server on loopback that asks for the bearer token), the events file, openlineage-python's
model of the spec, and prometheus_client's parser of the text format. Run by scripts/test.sh:

    python lineage_check.py SCORELAND_BIN WORK_DIR PIPELINE

Every event is rebuilt from openlineage-python's generated classes of the OpenLineage spec
(2-0-2): an unknown field, a missing required one, a run id that is not a UUID, an unknown
event type or facet schema version fails, and serialising the rebuilt event must give back
exactly what scoreland sent. (The package ships the spec as these classes, not as the JSON
schema file.)"""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import attr
from openlineage.client.generated import base
from openlineage.client.generated import dataset_version_dataset, error_message_run, job_type_job
from openlineage.client.generated import input_statistics_input_dataset, output_statistics_output_dataset
from openlineage.client.generated import processing_engine_run, schema_dataset
from openlineage.client.serde import Serde
from prometheus_client.parser import text_string_to_metric_families

from checks import check, summary

BIN, WORK, PIPELINE = sys.argv[1:4]
TOKEN = "lineage-token-for-the-test"

KNOWN = {
    "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
    "errorMessage": error_message_run.ErrorMessageRunFacet,
    "jobType": job_type_job.JobTypeJobFacet,
    "schema": schema_dataset.SchemaDatasetFacet,
    "version": dataset_version_dataset.DatasetVersionDatasetFacet,
    "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
    "inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet,
}
CUSTOM_BASES = {"run": base.RunFacet, "input": base.InputDatasetFacet}


def facet(kind, name, d):
    d = dict(d)
    producer = d.pop("_producer")
    schema = d.pop("_schemaURL")
    if name in KNOWN:
        cls = KNOWN[name]
        if name == "schema":
            d["fields"] = [schema_dataset.SchemaDatasetFacetFields(**f) for f in d["fields"]]
        built = cls(**d, producer=producer)
        assert built._schemaURL == schema, f"{name}: {schema} is not {built._schemaURL}"
        return built
    # scoreland's own facets: any fields, with the _producer and _schemaURL every facet has.
    assert name.startswith("scoreland_") and schema.startswith("urn:scoreland:facets:"), name
    cls = attr.make_class(name, {k: attr.ib() for k in d}, bases=(CUSTOM_BASES[kind],))
    built = cls(**d, producer=producer)
    return built


def rebuilt(e):
    """The event as openlineage-python's classes of the spec (raises on anything off-spec)."""
    run = base.Run(runId=e["run"]["runId"],
                   facets={k: facet("run", k, v) for k, v in e["run"]["facets"].items()})
    job = base.Job(namespace=e["job"]["namespace"], name=e["job"]["name"],
                   facets={k: facet("job", k, v) for k, v in e["job"]["facets"].items()})
    inputs = [base.InputDataset(namespace=i["namespace"], name=i["name"],
                                facets={k: facet("dataset", k, v) for k, v in i["facets"].items()},
                                inputFacets={k: facet("input", k, v) for k, v in i["inputFacets"].items()})
              for i in e["inputs"]]
    outputs = [base.OutputDataset(namespace=o["namespace"], name=o["name"],
                                  facets={k: facet("dataset", k, v) for k, v in o["facets"].items()},
                                  outputFacets={k: facet("output", k, v) for k, v in o["outputFacets"].items()})
               for o in e["outputs"]]
    extra = set(e) - {"eventType", "eventTime", "producer", "schemaURL", "run", "job", "inputs", "outputs"}
    assert not extra, extra
    event = base.RunEvent(eventType=base.EventType(e["eventType"]), eventTime=e["eventTime"],
                          producer=e["producer"], run=run, job=job, inputs=inputs, outputs=outputs)
    assert event.schemaURL == e["schemaURL"], e["schemaURL"]
    return event


def valid(e):
    try:
        back = Serde.to_dict(rebuilt(e))
    except Exception as x:  # noqa: BLE001 - any failure is the event's
        return f"{type(x).__name__}: {x}"
    # Serialised again, the event is what scoreland sent, apart from what the classes add or
    # cannot carry: an empty `fields` of a flat column, and the _schemaURL of scoreland's own
    # facets.
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()
                    if not (k == "fields" and x == [])
                    and not (k == "_schemaURL" and (str(x).startswith("urn:scoreland")
                                                    or "OpenLineage.json#/$defs/" in str(x)))}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return None if strip(back) == strip(e) else f"round trip differs: {first_difference(strip(back), strip(e))}"


def first_difference(a, b, at="event"):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{at}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{at}[{i}]")
    return f"{at}: {a!r} != {b!r}"


class Receiver(http.server.BaseHTTPRequestHandler):
    events, auth, answer = [], [], 200

    def do_POST(self):  # noqa: N802 - the standard library's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.auth.append(self.headers.get("Authorization"))
        Receiver.events.append(json.loads(body))
        self.send_response(Receiver.answer)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/lineage"

events_file = os.path.join(WORK, "lineage", "events.ndjson")
metrics_file = os.path.join(WORK, "metrics", "scoreland.prom")
text = open(PIPELINE).read()
root = os.path.dirname(os.path.dirname(os.path.abspath(PIPELINE)))
with_lineage = text.replace('data = "sample-data/platform"', f'data = "{root}/sample-data/platform"').replace(
    "[sink]", f'[lineage]\nurl = "{url}"\nfile = "{events_file}"\ntoken_env = "LINEAGE_TOKEN"\n\n[sink]')
pipeline = os.path.join(WORK, "demo-lineage.toml")
open(pipeline, "w").write(with_lineage)
strict = os.path.join(WORK, "demo-lineage-strict.toml")
open(strict, "w").write(with_lineage.replace("model_rows = { min = 100 }", "model_rows = { min = 1000000 }"))
env = {**os.environ, "SCORELAND_WAREHOUSE": os.path.join(WORK, "wh"), "SCORELAND_STAGING": os.path.join(WORK, "st"),
       "LINEAGE_TOKEN": TOKEN}


def run(path, *extra):
    return subprocess.run([BIN, "run", path, "--json", "--metrics-file", metrics_file, *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def metrics():
    families = {f.name: f for f in text_string_to_metric_families(open(metrics_file).read())}
    return {(f.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pipeline"))): s.value
            for f in families.values() for s in f.samples}


# A landed night: START then COMPLETE, with the dataset in and four tables out.
r = run(pipeline)
check("a landed run exits 0", (r.returncode, r.stderr[-500:] if r.returncode else ""), (0, ""))
landed = json.loads(r.stdout)
check("START and COMPLETE received", [e["eventType"] for e in Receiver.events], ["START", "COMPLETE"])
check("each with the bearer token", Receiver.auth, [f"Bearer {TOKEN}"] * 2)
check("one run id on both", len({e["run"]["runId"] for e in Receiver.events}), 1)
complete = Receiver.events[-1]
check("the input is the AEP dataset, with its batches",
      [(i["namespace"], i["name"], i["inputFacets"]["scoreland_batches"]["batches"]) for i in complete["inputs"]],
      [("aep://simulator", landed["dataset"], landed["batches"])])
staged = complete["inputs"][0]
manifest = json.load(open(os.path.join(WORK, "st", landed["dataset"], landed["batches"][0], "manifest.json")))
check("the input's staged columns (XDM's top level) and records, as the batch's manifest says",
      ([f["name"] for f in staged["facets"]["schema"]["fields"]][:2], staged["inputFacets"]["inputStatistics"]["rowCount"]),
      (["_id", "timestamp"], manifest["rows"]))
check("the outputs are the landed tables at their versions",
      sorted((o["name"], o["facets"]["version"]["datasetVersion"]) for o in complete["outputs"]),
      sorted((t["table"], str(t["version"])) for t in landed["tables"]))
scores = next(o for o in complete["outputs"] if o["name"] == "scores")
check("scores' row count and schema", (scores["outputFacets"]["outputStatistics"]["rowCount"],
                                       "identity" in [f["name"] for f in scores["facets"]["schema"]["fields"]]),
      (landed["rows_out"], True))

# A night the checks stop: FAIL, with the error.
r = run(strict, "--force")
check("a night the checks stop exits 5", r.returncode, 5)
fail = Receiver.events[-1]
check("FAIL received, naming the failed checks",
      (fail["eventType"], "checks failed" in fail["run"]["facets"]["errorMessage"]["message"], fail["outputs"]),
      ("FAIL", True, []))
m = metrics()
check("metrics of the failed run: not a success, status failed, the check failed",
      (m[("scoreland_run_success", ())], m[("scoreland_run_status", (("status", "failed"),))],
       m[("scoreland_check_failed", (("check", "model_rows.churn_risk"), ("level", "error")))]), (0.0, 1.0, 1.0))
check("the last success time survives a failed run", m.get(("scoreland_last_success_timestamp_seconds", ())) is not None, True)

# An endpoint that refuses: the night still lands, with a warning.
Receiver.answer = 500
r = run(pipeline, "--force")
refused = json.loads(r.stdout) if r.returncode == 0 else {}
check("a refusing endpoint is a warning, not a failed night",
      (r.returncode, any("lineage" in w and "500" in w for w in refused.get("warnings", []))), (0, True))
check("no warning holds the token", any(TOKEN in w for w in refused.get("warnings", [])) or TOKEN in r.stderr, False)
m = metrics()
check("metrics of a landed run", (m[("scoreland_run_success", ())], m[("scoreland_run_rows", (("stage", "out"),))]),
      (1.0, float(landed["rows_out"])))

# An endpoint that takes the connection and never answers: each event gives up after its
# timeout, and the night lands with warnings.
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen(8)
hanging = with_lineage.replace(url, f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/lineage").replace(
    f'file = "{events_file}"\n', "")
hanging_path = os.path.join(WORK, "demo-lineage-hanging.toml")
open(hanging_path, "w").write(hanging)
started = time.time()
r = run(hanging_path, "--force")
took = time.time() - started
hung = json.loads(r.stdout) if r.returncode == 0 else {}
check("an endpoint that never answers: the night lands, bounded, with a warning per event",
      (r.returncode, took < 60, sum("lineage" in w for w in hung.get("warnings", []))), (0, True, 2))
silent.close()

# Every event, as received and as appended to the file, is valid OpenLineage.
filed = [json.loads(l) for l in open(events_file)]
check("the file holds the events the endpoint was sent", [e["eventType"] for e in filed],
      ["START", "COMPLETE", "START", "FAIL", "START", "COMPLETE"])
check("every event is valid against openlineage-python's model of the spec",
      [(e["eventType"], valid(e)) for e in filed if valid(e)], [])
# The validator itself refuses what is off the spec (so that the check above can fail).
def mutated(change):
    e = json.loads(json.dumps(filed[1]))
    change(e)
    return e


off_spec = [
    mutated(lambda e: e["run"].update(runId="20261205T000000Z-1234abcd")),
    mutated(lambda e: e.update(eventType="LANDED")),
    mutated(lambda e: e["job"]["facets"]["jobType"].pop("integration")),
    mutated(lambda e: e["outputs"][0]["facets"]["version"].update(rows=1)),
    mutated(lambda e: e["outputs"][0]["facets"]["version"].update(_schemaURL="https://openlineage.io/spec/facets/9-9-9/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet")),
    mutated(lambda e: e.update(extra=1)),
]
check("the validator refuses events off the spec", [valid(e) is not None for e in off_spec], [True] * len(off_spec))
server.shutdown()
summary("lineage")
