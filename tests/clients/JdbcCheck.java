// What a JDBC client (Tableau, Metabase, DBeaver) asks `scoreland serve`, through the
// PostgreSQL JDBC driver: DatabaseMetaData discovery, prepared statements binding and reading
// each column type the warehouse has, and a server-side cursor with setFetchSize. Run by
// serve_clients.py as a single-file program:
//
//     java -cp postgresql.jar JdbcCheck.java PORT PASSWORD IDENTITY SCORE_DATE
//
// Prints one JSON object of what the driver answered; serve_clients.py compares it with
// `scoreland sql`. A failed call is reported as {"error": "..."} under its name rather than
// stopping the program, so one broken call does not hide the others.
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public class JdbcCheck {
    interface Call {
        Object run() throws Exception;
    }

    static final Map<String, Object> out = new LinkedHashMap<>();

    static void record(String name, Call call) {
        try {
            out.put(name, call.run());
        } catch (Exception e) {
            Map<String, Object> error = new LinkedHashMap<>();
            error.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
            out.put(name, error);
        }
    }

    /** The values of one column of a result set, as strings. */
    static List<Object> column(ResultSet rs, String name) throws Exception {
        List<Object> values = new ArrayList<>();
        try (rs) {
            while (rs.next()) values.add(rs.getString(name));
        }
        return values;
    }

    /** The first column of the first row as a long (a count). */
    static long count(PreparedStatement ps) throws Exception {
        try (ps; ResultSet rs = ps.executeQuery()) {
            rs.next();
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/datafusion";
        String identity = args[2];
        java.sql.Date scoreDate = java.sql.Date.valueOf(args[3]);
        Properties props = new Properties();
        props.setProperty("user", "scoreland");
        props.setProperty("password", args[1]);
        props.setProperty("connectTimeout", "10");
        props.setProperty("socketTimeout", "120");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            DatabaseMetaData meta = conn.getMetaData();
            record("product", () -> meta.getDatabaseProductName() + " " + meta.getDatabaseMajorVersion());
            record("schemas", () -> column(meta.getSchemas(), "TABLE_SCHEM"));
            record("tables", () -> column(meta.getTables(null, "public", "%", new String[] {"TABLE"}), "TABLE_NAME"));
            record("columns", () -> {
                List<Object> columns = new ArrayList<>();
                try (ResultSet rs = meta.getColumns(null, "public", "scores", "%")) {
                    while (rs.next()) {
                        columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":"
                                + rs.getInt("NULLABLE"));
                    }
                }
                return columns;
            });
            record("primary_keys", () -> column(meta.getPrimaryKeys(null, "public", "scores"), "COLUMN_NAME"));
            record("imported_keys", () -> column(meta.getImportedKeys(null, "public", "scores"), "FKCOLUMN_NAME"));
            record("index_info", () -> column(meta.getIndexInfo(null, "public", "scores", false, true), "INDEX_NAME"));
            record("type_info", () -> column(meta.getTypeInfo(), "TYPE_NAME").size());

            // Prepared statements: one parameter of each column type, and each type read back.
            record("text_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM scores WHERE identity = ?");
                ps.setString(1, identity);
                return count(ps);
            });
            record("double_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM scores WHERE score >= ?");
                ps.setDouble(1, 0.5);
                return count(ps);
            });
            record("integer_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM scores WHERE percentile >= ?");
                ps.setInt(1, 50);
                return count(ps);
            });
            record("date_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM scores WHERE score_date = ?");
                ps.setDate(1, scoreDate);
                return count(ps);
            });
            record("timestamptz_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM scores WHERE batch_created <= ?");
                ps.setObject(1, OffsetDateTime.now());
                return count(ps);
            });
            record("bigint_param", () -> {
                PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM summary WHERE \"rows\" >= ?");
                ps.setLong(1, 1L);
                return count(ps);
            });
            record("typed_row", () -> {
                PreparedStatement ps = conn.prepareStatement(
                        "SELECT s.identity, s.score, s.percentile, s.score_date, s.batch_created, m.\"rows\" "
                                + "FROM scores s JOIN summary m ON s.model = m.model AND s.score_date = m.score_date "
                                + "WHERE s.identity = ? ORDER BY s.model LIMIT 1");
                ps.setString(1, identity);
                try (ps; ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("identity", rs.getString(1));
                    row.put("score", rs.getDouble(2));
                    row.put("percentile", rs.getInt(3));
                    row.put("score_date", rs.getDate(4).toString());
                    row.put("batch_created_utc", rs.getObject(5, OffsetDateTime.class).toInstant().toString());
                    row.put("rows", rs.getLong(6));
                    return row;
                }
            });

            // A server-side cursor: the driver fetches 500 rows at a time inside a transaction.
            record("cursor_rows", () -> {
                conn.setAutoCommit(false);
                try (Statement st = conn.createStatement()) {
                    st.setFetchSize(500);
                    long rows = 0;
                    try (ResultSet rs = st.executeQuery("SELECT identity, score FROM scores")) {
                        while (rs.next()) rows++;
                    }
                    return rows;
                } finally {
                    conn.commit();
                    conn.setAutoCommit(true);
                }
            });
        }
        System.out.println(json(out));
    }

    static String json(Object value) {
        if (value == null) return "null";
        if (value instanceof Number || value instanceof Boolean) return value.toString();
        if (value instanceof Map<?, ?> map) {
            List<String> parts = new ArrayList<>();
            for (Map.Entry<?, ?> e : map.entrySet()) parts.add(json(e.getKey().toString()) + ": " + json(e.getValue()));
            return "{" + String.join(", ", parts) + "}";
        }
        if (value instanceof List<?> list) {
            List<String> parts = new ArrayList<>();
            for (Object v : list) parts.add(json(v));
            return "[" + String.join(", ", parts) + "]";
        }
        StringBuilder s = new StringBuilder("\"");
        for (char c : value.toString().toCharArray()) {
            if (c == '"' || c == '\\') s.append('\\').append(c);
            else if (c < 0x20) s.append(String.format("\\u%04x", (int) c));
            else s.append(c);
        }
        return s.append('"').toString();
    }
}
