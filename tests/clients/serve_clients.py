"""Real Postgres clients against `scoreland serve`: psql, psycopg 3 (extended protocol, bound
parameters, TLS), SQLAlchemy reflection and pandas.read_sql (through psycopg2 and psycopg 3),
the PostgreSQL JDBC driver (JdbcCheck.java) and psqlODBC through pyodbc; the server's login,
read-only refusals, limits, connection cap, new nights and graceful shutdown. Every answer is compared
with `scoreland sql` on the same warehouse. Run by scripts/test.sh after landing the demo:

    python serve_clients.py SCORELAND_BIN WAREHOUSE STAGING PIPELINE

Ends with a bounded load test on loopback (32 clients x 100 mixed queries); its figures are
printed as one JSON line (`load: {...}`)."""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import psycopg

from checks import check, summary

BIN, WAREHOUSE, STAGING, PIPELINE = sys.argv[1:5]
PASSWORD = "correct horse battery staple"
# The tables scripts/test.sh lands before: the demo pipeline's (`checks`: its quality gate's
# results) and web-events' `web_events` (a dataset landed from its schema).
TABLES = ["checks", "drift", "scores", "summary", "web_events"]


def sql(query):
    """What `scoreland sql` answers, as a list of dicts."""
    out = subprocess.run([BIN, "-q", "sql", query, "--warehouse", WAREHOUSE, "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.strip()]


class Server:
    """`scoreland serve` on a free loopback port, its address read from its first line."""

    def __init__(self, *args, password=PASSWORD):
        env = dict(os.environ)
        env.pop("SCORELAND_SERVE_PASSWORD", None)
        if password:
            env["SCORELAND_SERVE_PASSWORD"] = password
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([BIN, "serve", "--warehouse", WAREHOUSE, "--listen", "127.0.0.1:0", *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        for line in self.proc.stderr:
            self.log.write(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
            if time.time() > deadline:
                break
        else:
            raise SystemExit(f"serve did not start: {self.output()}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.write(line)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def dsn(self, password=PASSWORD, user="scoreland", **extra):
        parts = {"host": "127.0.0.1", "port": self.port, "dbname": "datafusion", "user": user,
                 "password": password, "connect_timeout": 10, **extra}
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def psql(server, *commands):
    args = ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(server.port), "-U", "scoreland", "-d", "datafusion"]
    for c in commands:
        args += ["-c", c]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PASSWORD}, timeout=60)
    return r.returncode, r.stdout, r.stderr


def error_of(fn):
    try:
        fn()
    except psycopg.Error as e:
        return type(e).__name__, getattr(e, "sqlstate", None), str(e)
    return None


server = Server("--query-memory", "32MiB", "--query-timeout", "4s", "--max-connections", "40")
try:
    # psql: the tables, a table's columns, and a query scoreland sql agrees with.
    code, out, err = psql(server, r"\dt")
    check("psql \\dt lists the tables", sorted(re.findall(r"\|([a-z_]+)\|table", out.replace(" ", ""))),
          TABLES)
    code, out, err = psql(server, r"\d scores")
    columns = [l.split("|")[0] for l in out.splitlines() if "|" in l]
    check("psql \\d scores shows its columns", all(c in columns for c in ["identity", "score", "score_date", "dataset_id", "run_id"]), True)
    want = sql("SELECT model, count(*) AS n, round(sum(score), 4) AS s FROM scores GROUP BY model ORDER BY model")
    code, out, err = psql(server, "SELECT model, count(*) AS n, round(sum(score), 4) AS s FROM scores GROUP BY model ORDER BY model")
    got = [dict(zip(["model", "n", "s"], l.split("|"))) for l in out.strip().splitlines()]
    check("psql agrees with scoreland sql", [(r["model"], int(r["n"]), float(r["s"])) for r in got],
          [(r["model"], r["n"], r["s"]) for r in want])

    # psycopg 3: the extended protocol with a bound parameter.
    identity = sql("SELECT identity FROM scores WHERE identity IS NOT NULL ORDER BY identity LIMIT 1")[0]["identity"]
    want = sql(f"SELECT model, score FROM scores WHERE identity = '{identity}' ORDER BY model")
    with psycopg.connect(server.dsn()) as conn:
        rows = conn.execute("SELECT model, score FROM scores WHERE identity = %s ORDER BY model", (identity,)).fetchall()
        check("psycopg bound parameter agrees with scoreland sql", [(m, s) for m, s in rows], [(r["model"], r["score"]) for r in want])
        check("psycopg sees a read-only server", conn.execute("SHOW transaction_read_only").fetchone()[0] in ("on", "true"), True)
        # DDL and DML are refused; the session goes on.
        for stmt in ["CREATE TABLE t (a int)", "DELETE FROM scores", "DROP TABLE scores", "INSERT INTO scores (model) VALUES ('x')"]:
            e = error_of(lambda: conn.execute(stmt))
            check(f"refused: {stmt}", (e[1], "read-only" in e[2]) if e else None, ("25006", True))
            conn.rollback()
        check("the session goes on after a refusal", conn.execute("SELECT count(*) FROM scores").fetchone()[0],
              sql("SELECT count(*) AS n FROM scores")[0]["n"])

    # A wrong password, and an unknown user, are refused.
    e = error_of(lambda: psycopg.connect(server.dsn(password="wrong")))
    check("a wrong password is refused", e is not None and e[0] == "OperationalError", True)
    e = error_of(lambda: psycopg.connect(server.dsn(user="mallory")))
    check("an unknown user is refused", e is not None and e[0] == "OperationalError", True)

    # A bound parameter inside a subquery is refused, never run without its value.
    with psycopg.connect(server.dsn()) as conn:
        e = error_of(lambda: conn.execute("SELECT (SELECT %s::VARCHAR) AS v", ("x",)).fetchall())
        check("a bound parameter inside a subquery: 0A000", e[1] if e else None, "0A000")

    # SQLAlchemy reflection (what Superset uses to list tables and columns; psycopg2 is its
    # default Postgres driver) and pandas.
    import pandas
    import sqlalchemy
    # Both drivers: psycopg2 binds on the client, psycopg 3 on the server (the catalog
    # queries then carry parameters).
    for driver in ["psycopg2", "psycopg"]:
        engine = sqlalchemy.create_engine(
            f"postgresql+{driver}://scoreland:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{server.port}/datafusion")
        insp = sqlalchemy.inspect(engine)
        name = f"SQLAlchemy {sqlalchemy.__version__} + {driver}"
        check(f"{name}: get_table_names", sorted(insp.get_table_names()), TABLES)
        check(f"{name}: has_table", (insp.has_table("scores"), insp.has_table("nothing")), (True, False))
        cols = {c["name"]: str(c["type"]) for c in insp.get_columns("scores")}
        check(f"{name}: get_columns(scores)", (cols.get("identity"), cols.get("score"), cols.get("score_date")),
              ("TEXT", "DOUBLE PRECISION", "DATE"))
        check(f"{name}: no keys, indexes or constraints",
              (insp.get_pk_constraint("scores")["constrained_columns"], insp.get_foreign_keys("scores"),
               insp.get_indexes("scores"), insp.get_unique_constraints("scores"),
               insp.get_check_constraints("scores"), insp.get_table_comment("scores")["text"]),
              ([], [], [], [], [], None))
        check(f"{name}: get_schema_names", insp.get_schema_names(), ["public"])
        meta = sqlalchemy.MetaData()
        meta.reflect(engine)
        check(f"{name}: MetaData.reflect", sorted(meta.tables), TABLES)
        frame = pandas.read_sql("SELECT model, score FROM scores", engine)
        check(f"{name}: pandas.read_sql rows", len(frame), sql("SELECT count(*) AS n FROM scores")[0]["n"])
        check(f"{name}: pandas.read_sql_table(summary) rows", len(pandas.read_sql_table("summary", engine)),
              sql("SELECT count(*) AS n FROM summary")[0]["n"])
        engine.dispose()

    # What JDBC (Tableau, Metabase, DBeaver) and ODBC (Excel, Power BI) clients ask, each type
    # bound as a parameter and read back, against scoreland sql.
    score_date = sql(f"SELECT CAST(min(score_date) AS VARCHAR) AS d FROM scores WHERE identity = '{identity}'")[0]["d"]
    row = sql("SELECT s.identity, s.score, s.percentile, CAST(s.score_date AS VARCHAR) AS score_date, "
              "CAST(s.batch_created AS VARCHAR) AS batch_created, m.rows FROM scores s JOIN summary m "
              f"ON s.model = m.model AND s.score_date = m.score_date WHERE s.identity = '{identity}' "
              "ORDER BY s.model LIMIT 1")[0]
    counts = sql(f"SELECT (SELECT count(*) FROM scores WHERE identity = '{identity}') AS text_param, "
                 "(SELECT count(*) FROM scores WHERE score >= 0.5) AS double_param, "
                 "(SELECT count(*) FROM scores WHERE percentile >= 50) AS integer_param, "
                 f"(SELECT count(*) FROM scores WHERE score_date = DATE '{score_date}') AS date_param, "
                 "(SELECT count(*) FROM scores) AS timestamptz_param, "
                 "(SELECT count(*) FROM summary WHERE rows >= 1) AS bigint_param")[0]
    # The scores table's columns as Postgres types (docs/serve.md: lists and structs as JSON text).
    columns = [("model", "text"), ("identity", "text"), ("identity_namespace", "text"), ("score", "float8"),
               ("probability", "float8"), ("percentile", "int4"), ("propensity_type", "text"), ("score_date", "date"),
               ("influential_factors", "text"), ("record_id", "text"), ("batch_id", "text"),
               ("batch_created", "timestamptz"), ("run_id", "text"), ("dataset_id", "text")]

    jdbc_jar = "/usr/share/java/postgresql.jar"
    r = subprocess.run(["java", "-cp", jdbc_jar, os.path.join(os.path.dirname(__file__), "JdbcCheck.java"),
                        str(server.port), PASSWORD, identity, score_date], capture_output=True, text=True, timeout=300)
    jdbc = json.loads(r.stdout) if r.returncode == 0 else {}
    check("JDBC: the program ran", (r.returncode, r.stderr[-2000:]), (0, ""))
    with zipfile.ZipFile(jdbc_jar) as jar:
        version = re.search(r"Implementation-Version: (\S+)", jar.read("META-INF/MANIFEST.MF").decode())
    jdbc_name = f"JDBC {version.group(1) if version else '(version unknown)'}"
    check(f"{jdbc_name}: getSchemas, getTables", (jdbc.get("schemas"), jdbc.get("tables")),
          (["pg_catalog", "public"], TABLES))
    check(f"{jdbc_name}: getColumns(scores) names and types",
          [tuple(c.split(":")[:2]) for c in jdbc.get("columns", [])], columns)
    check(f"{jdbc_name}: getPrimaryKeys, getImportedKeys, getIndexInfo: none",
          (jdbc.get("primary_keys"), jdbc.get("imported_keys"), jdbc.get("index_info")), ([], [], []))
    check(f"{jdbc_name}: getTypeInfo answers", isinstance(jdbc.get("type_info"), int) and jdbc["type_info"] > 0, True)
    for kind in ["text", "double", "integer", "date", "timestamptz", "bigint"]:
        check(f"{jdbc_name}: one {kind} parameter", jdbc.get(f"{kind}_param"), counts[f"{kind}_param"])
    typed = jdbc.get("typed_row", {})
    check(f"{jdbc_name}: each type read back",
          (typed.get("identity"), typed.get("score"), typed.get("percentile"), typed.get("score_date"),
           typed.get("batch_created_utc", "")[:19], typed.get("rows")),
          (row["identity"], row["score"], row["percentile"], row["score_date"], row["batch_created"][:19], row["rows"]))
    check(f"{jdbc_name}: a server-side cursor (setFetchSize 500) reads every row", jdbc.get("cursor_rows"),
          counts["timestamptz_param"])

    import datetime
    import pyodbc
    odbc_dsn = (f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={server.port};DATABASE=datafusion;"
                f"UID=scoreland;PWD={{{PASSWORD}}};")
    with pyodbc.connect(odbc_dsn, timeout=10) as conn:
        odbc_name = f"psqlODBC {conn.getinfo(pyodbc.SQL_DRIVER_VER)} (pyodbc {pyodbc.version})"
        cur = conn.cursor()
        check(f"{odbc_name}: SQLTables", sorted(r.table_name for r in cur.tables(schema="public", tableType="TABLE")),
              TABLES)
        check(f"{odbc_name}: SQLTables lists the schemas",
              [r.table_schem for r in cur.tables(catalog="", schema="%", table="", tableType="")], ["public"])
        check(f"{odbc_name}: SQLColumns(scores) names and types",
              [(r.column_name, r.type_name) for r in cur.columns(table="scores", schema="public")], columns)
        check(f"{odbc_name}: SQLPrimaryKeys, SQLForeignKeys, SQLStatistics: none",
              (list(cur.primaryKeys("scores", schema="public")), list(cur.foreignKeys("scores", schema="public")),
               list(cur.foreignKeys(foreignTable="scores", foreignSchema="public")),
               list(cur.statistics("scores", schema="public"))), ([], [], [], []))
        check(f"{odbc_name}: SQLGetTypeInfo answers", len(cur.getTypeInfo().fetchall()) > 0, True)
        params = {"text": ("SELECT count(*) FROM scores WHERE identity = ?", identity),
                  "double": ("SELECT count(*) FROM scores WHERE score >= ?", 0.5),
                  "integer": ("SELECT count(*) FROM scores WHERE percentile >= ?", 50),
                  "date": ("SELECT count(*) FROM scores WHERE score_date = ?", datetime.date.fromisoformat(score_date)),
                  "timestamptz": ("SELECT count(*) FROM scores WHERE batch_created <= ?", datetime.datetime.now()),
                  "bigint": ('SELECT count(*) FROM summary WHERE "rows" >= ?', 1)}
        for kind, (query, value) in params.items():
            check(f"{odbc_name}: one {kind} parameter", cur.execute(query, value).fetchone()[0], counts[f"{kind}_param"])
        got = cur.execute('SELECT s.identity, s.score, s.percentile, s.score_date, s.batch_created, m."rows" '
                          "FROM scores s JOIN summary m ON s.model = m.model AND s.score_date = m.score_date "
                          "WHERE s.identity = ? ORDER BY s.model LIMIT 1", identity).fetchone()
        check(f"{odbc_name}: each type read back",
              (got[0], got[1], got[2], got[3].isoformat(), got[4].isoformat()[:19], got[5]),
              (row["identity"], row["score"], row["percentile"], row["score_date"], row["batch_created"][:19],
               row["rows"]))

    # Limits: a query over the memory limit, or the timeout, fails alone.
    with psycopg.connect(server.dsn()) as a, psycopg.connect(server.dsn()) as b:
        # A hash join's build side cannot spill: 5 M rows need more than 32 MiB.
        e = error_of(lambda: a.execute("SELECT count(*) FROM generate_series(1, 5000000) AS l(x) "
                                       "JOIN generate_series(1, 5000000) AS r(y) ON l.x = r.y").fetchall())
        check("a query over --query-memory fails with 53200, naming the limit",
              (e[1], "--query-memory" in e[2]) if e else None, ("53200", True))
        a.rollback()
        # What can spill does: a 2 M-group aggregation completes within the same limit.
        check("a spilling aggregation completes within --query-memory",
              a.execute("SELECT count(DISTINCT x) FROM generate_series(1, 2000000) AS t(x)").fetchone()[0], 2000000)
        a.rollback()
        started = time.time()
        e = error_of(lambda: a.execute("SELECT sum(x) FROM generate_series(1, 100000000000) AS t(x)").fetchall())
        check("a query over --query-timeout fails with 57014", (e[1] if e else None, time.time() - started < 30), ("57014", True))
        a.rollback()
        check("the other session is unaffected", b.execute("SELECT count(*) FROM scores").fetchone()[0] > 0, True)
        check("the same session goes on", a.execute("SELECT 1").fetchone()[0], 1)

    # A new night becomes visible to a connected session's next query.
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT DISTINCT run_id FROM scores").fetchall()}
        r = subprocess.run([BIN, "-q", "run", PIPELINE, "--force", "--json"], capture_output=True, text=True,
                           env={**os.environ, "SCORELAND_WAREHOUSE": WAREHOUSE, "SCORELAND_STAGING": STAGING})
        new_run = json.loads(r.stdout)["run_id"] if r.returncode == 0 else None
        check("a new night lands meanwhile", r.returncode, 0)
        deadline, seen = time.time() + 15, before
        while time.time() < deadline and new_run not in seen:
            seen = {r[0] for r in conn.execute("SELECT DISTINCT run_id FROM scores").fetchall()}
            time.sleep(0.2)
        check("the connected session sees the new night", (new_run in seen, new_run in before), (True, False))

    # Load: 32 clients x 100 mixed queries (one identity's scores; a summary scan).
    identities = [r["identity"] for r in sql("SELECT DISTINCT identity FROM scores WHERE identity IS NOT NULL ORDER BY identity LIMIT 200")]
    latencies, errors = [], []

    def client(i):
        try:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                for q in range(100):
                    t = time.perf_counter()
                    if q % 5 == 4:
                        conn.execute("SELECT model, score_date, avg(score) FROM scores GROUP BY 1, 2").fetchall()
                    else:
                        conn.execute("SELECT model, score, percentile FROM scores WHERE identity = %s",
                                     (identities[(i * 100 + q) % len(identities)],)).fetchall()
                    latencies.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            errors.append(repr(e))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - started
    check("load: 32 clients x 100 queries without an error", (len(latencies), errors[:3]), (3200, []))
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    print("load: " + json.dumps({"queries": len(latencies), "wall_s": round(wall, 2),
                                 "qps": round(len(latencies) / wall, 1),
                                 "p50_ms": round(q[49] * 1e3, 1), "p99_ms": round(q[98] * 1e3, 1)}), flush=True)
finally:
    code = server.stop()
check("serve exits 0 on SIGTERM", code, 0)

# The connection cap: one more than --max-connections is told so.
capped = Server("--max-connections", "2")
try:
    held = [psycopg.connect(capped.dsn()) for _ in range(2)]
    e = error_of(lambda: psycopg.connect(capped.dsn()))
    check("a connection over --max-connections is refused", e is not None and "too many clients" in e[2], True)
    for c in held:
        c.close()
finally:
    capped.stop()

# Graceful shutdown: a query running when SIGTERM arrives finishes, then the server exits 0.
graceful = Server()
try:
    conn = psycopg.connect(graceful.dsn())
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        n=conn.execute("SELECT count(*) FROM generate_series(1, 30000000) AS t(x) WHERE x % 7 = 0").fetchone()[0]))
    worker.start()
    time.sleep(0.5)
    graceful.proc.send_signal(signal.SIGTERM)
    worker.join(timeout=60)
    conn.close()
    check("a running query finishes after SIGTERM", result.get("n"), 30000000 // 7)
    check("then serve exits 0", graceful.proc.wait(timeout=60), 0)
finally:
    if graceful.proc.poll() is None:
        graceful.proc.kill()

# Without a password: loopback only, and it says so; a public address is refused.
r = subprocess.run([BIN, "serve", "--warehouse", WAREHOUSE, "--listen", "0.0.0.0:0"], capture_output=True, text=True,
                   env={k: v for k, v in os.environ.items() if k != "SCORELAND_SERVE_PASSWORD"}, timeout=60)
check("no password and a public address: refused", (r.returncode, "loopback" in r.stderr), (2, True))

# TLS with --tls-cert/--tls-key.
with tempfile.TemporaryDirectory() as d:
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-subj", "/CN=127.0.0.1", "-days", "1"], check=True, capture_output=True)
    tls = Server("--tls-cert", cert, "--tls-key", key)
    try:
        with psycopg.connect(tls.dsn(sslmode="require")) as conn:
            check("TLS: a query over sslmode=require", conn.execute("SELECT count(*) FROM summary").fetchone()[0],
                  sql("SELECT count(*) AS n FROM summary")[0]["n"])
            check("TLS: the connection is encrypted", conn.pgconn.ssl_in_use, True)
    finally:
        tls.stop()

sys.exit(summary("serve clients"))
