//! Raw statements written once for every dialect: `:name` markers become
//! `$1, $2, ...` on PostgreSQL and `?` elsewhere, with the values bound in
//! the order the markers appear.

use sea_orm::{DbBackend, Statement, Value};

/// Renders `template` for `backend`. A marker is `:` followed by a name
/// of lowercase letters, digits and `_`; `:name` may appear several times and is bound each
/// time. A marker that names a list (`:ids` bound to several values)
/// expands to a comma-separated list of placeholders.
pub(crate) fn render(backend: DbBackend, template: &str, params: &[(&str, Param)]) -> Statement {
    let mut sql = String::with_capacity(template.len() + 16);
    let mut values = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find(':') {
        sql.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..len];
        let param = params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no value for :{name} in {template}"));
        let one = |sql: &mut String, values: &mut Vec<Value>, value: &Value| {
            values.push(value.clone());
            match backend {
                DbBackend::Postgres => {
                    sql.push('$');
                    sql.push_str(&values.len().to_string());
                }
                _ => sql.push('?'),
            }
        };
        match param {
            Param::One(value) => one(&mut sql, &mut values, value),
            Param::List(list) => {
                for (i, value) in list.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    one(&mut sql, &mut values, value);
                }
            }
        }
        rest = &after[len..];
    }
    sql.push_str(rest);
    Statement::from_sql_and_values(backend, sql, values)
}

/// A value bound to a marker.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    One(Value),
    List(Vec<Value>),
}

impl Param {
    pub(crate) fn one(value: impl Into<Value>) -> Self {
        Param::One(value.into())
    }

    pub(crate) fn list<V: Into<Value>>(values: impl IntoIterator<Item = V>) -> Self {
        Param::List(values.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_become_placeholders_in_order() {
        let params = [("now", Param::one(1_i64)), ("ids", Param::list([7_i64, 8]))];
        let template = "a <= :now AND b > :now AND id IN (:ids)";
        let pg = render(DbBackend::Postgres, template, &params);
        assert_eq!(pg.sql, "a <= $1 AND b > $2 AND id IN ($3, $4)");
        let my = render(DbBackend::MySql, template, &params);
        assert_eq!(my.sql, "a <= ? AND b > ? AND id IN (?, ?)");
        assert_eq!(my.values.unwrap().0.len(), 4);
    }
}
