//! `${VAR}` interpolation of pipeline files: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`,
//! and `$$` for a literal `$`.

/// What a variable not set becomes under `validate`.
pub(crate) const UNSET: &str = "unset-";

/// Whether `value` holds a variable that `validate` found unset.
pub(crate) fn is_unset(value: &str) -> bool {
    value.contains(UNSET)
}

pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;
/// What a required variable that is not set becomes (for `validate`); `None` makes it an error.
pub(crate) type Missing<'a> = &'a dyn Fn(&str) -> String;

pub(crate) fn interpolate_table(
    table: &mut toml::Table,
    path: &mut Vec<String>,
    lookup: Lookup,
    missing: Option<Missing>,
) -> Result<(), String> {
    for (k, v) in table.iter_mut() {
        path.push(k.clone());
        interpolate_value(v, path, lookup, missing)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    v: &mut toml::Value,
    path: &mut Vec<String>,
    lookup: Lookup,
    missing: Option<Missing>,
) -> Result<(), String> {
    match v {
        toml::Value::String(s) => {
            *s = expand(s, lookup, missing).map_err(|e| format!("{}: {e}", path.join(".")))?;
        }
        toml::Value::Table(t) => interpolate_table(t, path, lookup, missing)?,
        toml::Value::Array(items) => {
            for item in items {
                interpolate_value(item, path, lookup, missing)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `${VAR:?message}`; `$$` is a literal `$`.
pub fn interpolate(s: &str, lookup: Lookup) -> Result<String, String> {
    expand(s, lookup, None)
}

fn expand(s: &str, lookup: Lookup, missing: Option<Missing>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in {s:?}"))?;
        let expr = &body[..end];
        rest = &body[end + 1..];
        let (name, op) = match expr.find([':']) {
            Some(j) => (&expr[..j], Some(&expr[j..])),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'${{{expr}}}' is not a variable reference"));
        }
        let value = lookup(name).filter(|v| !v.is_empty());
        match (value, op) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(op)) if op.starts_with(":-") => out.push_str(&op[2..]),
            (None, _) if missing.is_some() => {
                out.push_str(&missing.map(|m| m(name)).unwrap_or_default())
            }
            (None, Some(op)) if op.starts_with(":?") => {
                let msg = &op[2..];
                return Err(if msg.is_empty() {
                    format!("environment variable {name} is not set")
                } else {
                    format!("environment variable {name} is not set: {msg}")
                });
            }
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                ));
            }
            (None, Some(op)) => return Err(format!("unknown operator '{op}' in '${{{expr}}}'")),
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_forms() {
        assert_eq!(interpolate("x-${A}-y", &env).unwrap(), "x-alpha-y");
        assert_eq!(interpolate("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(interpolate("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert!(
            interpolate("${B}", &env)
                .unwrap_err()
                .contains("B is not set")
        );
        assert!(
            interpolate("${B:?set it}", &env)
                .unwrap_err()
                .contains("set it")
        );
        assert!(interpolate("${A", &env).is_err());
    }
}
