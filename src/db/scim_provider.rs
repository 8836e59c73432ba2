//! The SQL of the SCIM provider's reads and of its groups: users as the provider serves
//! them (not deleted, with their groups), filtered lists with `totalResults`, uniqueness
//! checks, and the `scim_groups` / `scim_group_members` tables.
//!
//! User *writes* are not here: they go through the SCIM unit of work in `scim`
//! ([`super::scim::apply_batch`]), the same one Kafka events take. Filters arrive compiled
//! ([`super::scim_filter`]); their values are parameters.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::scim_filter::SqlCondition;
use crate::actors::scim::StoredUser;

/// A stored user as the provider serves it.
#[derive(Debug, Clone)]
pub struct ProviderUser {
    pub user_id: String,
    pub user_name: String,
    pub resource: Value,
    pub version: i64,
    pub deleted: bool,
    pub occurred_at: OffsetDateTime,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    /// The ids of the groups the user is a member of (a JSON array), then, once
    /// [`name_groups`] ran, `[{value, display, type}]`.
    pub groups: Value,
}

const USER_COLUMNS: &str = "u.user_id, u.user_name, u.scim, u.version, u.deleted,
    u.source_occurred_at, u.created_at, u.updated_at,
    (select jsonb_agg(m.group_id order by m.group_id) from scim_group_members m
      where m.tenant_id = u.tenant_id and m.user_id = u.user_id) as groups";

fn to_user(r: &tokio_postgres::Row) -> ProviderUser {
    ProviderUser {
        user_id: r.get("user_id"),
        user_name: r.get("user_name"),
        resource: r.get("scim"),
        version: r.get("version"),
        deleted: r.get("deleted"),
        occurred_at: r.get("source_occurred_at"),
        created: r.get("created_at"),
        updated: r.get("updated_at"),
        groups: r.get::<_, Option<Value>>("groups").unwrap_or(Value::Null),
    }
}

/// The user `id` (deleted or not); with `lock`, locked for this transaction.
pub async fn user(
    tx: &Transaction<'_>,
    t: &str,
    id: &str,
    lock: bool,
) -> Result<Option<ProviderUser>, tokio_postgres::Error> {
    Ok(users(tx, t, &[id], lock).await?.remove(id))
}

/// The users `ids` (deleted or not) with their groups, by id (one statement, plus one
/// naming their groups when any is in one); with `lock`, locked in id order for this
/// transaction. The batched writes read their users with it.
pub async fn users(
    tx: &Transaction<'_>,
    t: &str,
    ids: &[&str],
    lock: bool,
) -> Result<HashMap<String, ProviderUser>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "select {USER_COLUMNS} from users u where u.tenant_id = $1 and u.user_id = any($2){}",
        if lock {
            " order by u.user_id for update of u"
        } else {
            ""
        }
    );
    let mut found: Vec<ProviderUser> =
        super::statements::query_typed(tx, &sql, &[(&t, Type::TEXT), (&ids, Type::TEXT_ARRAY)])
            .await?
            .iter()
            .map(to_user)
            .collect();
    name_groups(tx, t, &mut found).await?;
    Ok(found.into_iter().map(|u| (u.user_id.clone(), u)).collect())
}

/// The users `ids` as [`users`] reads them, and each also as the SCIM unit of work stores
/// it ([`StoredUser`]: what its rules decide on), in the same statement. The HTTP writes
/// read their users with it: the unit of work then need not lock and read them again
/// ([`super::scim::Locked`]).
pub async fn users_to_write(
    tx: &Transaction<'_>,
    t: &str,
    ids: &[&str],
    lock: bool,
) -> Result<(HashMap<String, ProviderUser>, HashMap<String, StoredUser>), tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok((HashMap::new(), HashMap::new()));
    }
    let sql = format!(
        "select {USER_COLUMNS}, u.email, u.role, u.external_id, u.manager_id, u.active,
                u.source_event_id
           from users u where u.tenant_id = $1 and u.user_id = any($2){}",
        if lock {
            " order by u.user_id for update of u"
        } else {
            ""
        }
    );
    let rows =
        super::statements::query_typed(tx, &sql, &[(&t, Type::TEXT), (&ids, Type::TEXT_ARRAY)])
            .await?;
    let mut found: Vec<ProviderUser> = rows.iter().map(to_user).collect();
    let stored = rows
        .iter()
        .map(|r| {
            let u = super::scim::row_to_user(r);
            (u.user_id.clone(), u)
        })
        .collect();
    name_groups(tx, t, &mut found).await?;
    Ok((
        found.into_iter().map(|u| (u.user_id.clone(), u)).collect(),
        stored,
    ))
}

/// Turns the users' group ids into `{value, display, type}` (one query, only when a user
/// is in a group: a lookup of users outside groups costs nothing more).
async fn name_groups(
    tx: &Transaction<'_>,
    t: &str,
    users: &mut [ProviderUser],
) -> Result<(), tokio_postgres::Error> {
    let ids: Vec<String> = users
        .iter()
        .flat_map(|u| u.groups.as_array().into_iter().flatten())
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        for u in users.iter_mut() {
            u.groups = Value::Array(Vec::new());
        }
        return Ok(());
    }
    let names: HashMap<String, String> = super::statements::query_typed(
        tx,
        "select group_id, display_name from scim_groups
              where tenant_id = $1 and group_id = any($2)",
        &[(&t, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    for u in users.iter_mut() {
        let named: Vec<Value> = u
            .groups
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|g| serde_json::json!({"value": g, "display": names.get(g), "type": "direct"}))
            .collect();
        u.groups = Value::Array(named);
    }
    Ok(())
}

/// One page of the users a filter selects (deleted users never), in id order, and how
/// many it selects in all.
pub async fn list_users(
    tx: &Transaction<'_>,
    t: &str,
    filter: Option<&SqlCondition>,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<ProviderUser>), tokio_postgres::Error> {
    let (total, rows) = list(tx, t, filter, offset, limit, ListOf::Users).await?;
    let mut users: Vec<ProviderUser> = rows.iter().map(to_user).collect();
    name_groups(tx, t, &mut users).await?;
    Ok((total, users))
}

enum ListOf {
    Users,
    Groups,
}

/// `select ... where <tenant> and <filter> order by id offset limit`, plus the total: from
/// the page itself when it is not full, else by a count of its own.
async fn list(
    tx: &Transaction<'_>,
    t: &str,
    filter: Option<&SqlCondition>,
    offset: i64,
    limit: i64,
    of: ListOf,
) -> Result<(i64, Vec<tokio_postgres::Row>), tokio_postgres::Error> {
    // The compiled condition numbers its parameters from $4: $1 tenant, $2 offset, $3 limit.
    let (from, columns, order) = match of {
        ListOf::Users => (
            "users u where u.tenant_id = $1 and not u.deleted",
            USER_COLUMNS,
            "u.user_id",
        ),
        ListOf::Groups => (
            "scim_groups u where u.tenant_id = $1",
            GROUP_COLUMNS,
            "u.group_id",
        ),
    };
    let cond = filter.map_or(String::new(), |c| format!(" and ({})", c.sql));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t, &offset, &limit];
    if let Some(c) = filter {
        params.extend(c.params.iter().map(|p| p as &(dyn ToSql + Sync)));
    }
    // Typed parameters (text, int8, int8, then the filter's text values): parsed, bound and
    // run in one round trip, no separate prepare.
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                *p,
                if i == 1 || i == 2 {
                    Type::INT8
                } else {
                    Type::TEXT
                },
            )
        })
        .collect();
    let rows = if limit > 0 {
        let sql = format!("select {columns} from {from}{cond} order by {order} offset $2 limit $3");
        super::statements::query_typed(tx, &sql, &typed).await?
    } else {
        Vec::new()
    };
    // A page that is not full and did not start past the end holds the rest: the total
    // follows without counting (a `userName eq` lookup is one statement).
    let total = if !rows.is_empty() && (rows.len() as i64) < limit {
        offset + rows.len() as i64
    } else if rows.is_empty() && offset == 0 && limit > 0 {
        0
    } else {
        let sql = format!("select count(*) from {from}{cond} and $2::int8 >= 0 and $3::int8 >= 0");
        super::statements::query_typed(tx, &sql, &typed)
            .await?
            .first()
            .map_or(0, |r| r.get(0))
    };
    Ok((total, rows))
}

/// Serialises writers of one user name in the tenant (a transaction-scoped advisory lock)
/// and tells whether another, not deleted user holds it (case-insensitively, as
/// `userName` is unique in SCIM).
pub async fn user_name_taken(
    tx: &Transaction<'_>,
    t: &str,
    user_name: &str,
    except_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    // Pipelined (one round trip); the lock is taken before the check runs.
    let lock_params = [
        (&t as &(dyn ToSql + Sync), Type::TEXT),
        (&user_name, Type::TEXT),
    ];
    let check_params = [
        (&t as &(dyn ToSql + Sync), Type::TEXT),
        (&user_name, Type::TEXT),
        (&except_id, Type::TEXT),
    ];
    let (locked, found) = tokio::join!(
        biased;
        super::statements::query_typed(
            tx,
            "select pg_advisory_xact_lock(hashtextextended('scim-user:' || $1 || ':' || lower($2), 0))",
            &lock_params,
        ),
        super::statements::query_typed(
            tx,
            "select 1 from users where tenant_id = $1 and user_name_lower = lower($2)
                and not deleted and user_id <> $3 limit 1",
            &check_params,
        ),
    );
    locked?;
    let found = found?;
    Ok(!found.is_empty())
}

/// A stored group (members separately: [`members`]).
#[derive(Debug, Clone)]
pub struct ProviderGroup {
    pub group_id: String,
    pub display_name: String,
    pub resource: Value,
    pub version: i64,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
}

const GROUP_COLUMNS: &str =
    "u.group_id, u.display_name, u.scim, u.version, u.created_at, u.updated_at";

fn to_group(r: &tokio_postgres::Row) -> ProviderGroup {
    ProviderGroup {
        group_id: r.get("group_id"),
        display_name: r.get("display_name"),
        resource: r.get("scim"),
        version: r.get("version"),
        created: r.get("created_at"),
        updated: r.get("updated_at"),
    }
}

/// The group `id`; with `lock`, locked for this transaction.
pub async fn group(
    tx: &Transaction<'_>,
    t: &str,
    id: &str,
    lock: bool,
) -> Result<Option<ProviderGroup>, tokio_postgres::Error> {
    let sql = format!(
        "select {GROUP_COLUMNS} from scim_groups u where u.tenant_id = $1 and u.group_id = $2{}",
        if lock { " for update" } else { "" }
    );
    Ok(tx.query_opt(&sql, &[&t, &id]).await?.as_ref().map(to_group))
}

/// One page of the groups a filter selects, in id order, and how many it selects in all.
pub async fn list_groups(
    tx: &Transaction<'_>,
    t: &str,
    filter: Option<&SqlCondition>,
    offset: i64,
    limit: i64,
) -> Result<(i64, Vec<ProviderGroup>), tokio_postgres::Error> {
    list(tx, t, filter, offset, limit, ListOf::Groups)
        .await
        .map(|(total, rows)| (total, rows.iter().map(to_group).collect()))
}

/// The members of `groups` as `(user id, user name)`, in user id order, per group.
pub async fn members(
    tx: &Transaction<'_>,
    t: &str,
    groups: &[String],
) -> Result<HashMap<String, Vec<(String, String)>>, tokio_postgres::Error> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in tx
        .query(
            "select m.group_id, m.user_id, coalesce(u.user_name, m.user_id)
               from scim_group_members m
               left join users u on u.tenant_id = m.tenant_id and u.user_id = m.user_id
              where m.tenant_id = $1 and m.group_id = any($2::text[])
              order by m.group_id, m.user_id",
            &[&t, &groups],
        )
        .await?
    {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// Serialises writers of one group display name in the tenant and tells whether another
/// group holds it (case-insensitively).
pub async fn group_name_taken(
    tx: &Transaction<'_>,
    t: &str,
    display_name: &str,
    except_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    tx.execute(
        "select pg_advisory_xact_lock(hashtextextended('scim-group:' || $1 || ':' || lower($2), 0))",
        &[&t, &display_name],
    )
    .await?;
    Ok(tx
        .query_opt(
            "select 1 from scim_groups where tenant_id = $1
                and display_name_lower = lower($2) and group_id <> $3 limit 1",
            &[&t, &display_name, &except_id],
        )
        .await?
        .is_some())
}

/// Inserts or updates a group's attributes (not its members); returns its new version.
pub async fn upsert_group(
    tx: &Transaction<'_>,
    t: &str,
    id: &str,
    display_name: &str,
    external_id: Option<&str>,
    resource: &Value,
) -> Result<i64, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "insert into scim_groups (tenant_id, group_id, display_name, external_id, scim, version)
             values ($1, $2, $3, $4, $5, 1)
             on conflict (tenant_id, group_id) do update set
                 display_name = excluded.display_name, external_id = excluded.external_id,
                 scim = excluded.scim, version = scim_groups.version + 1, updated_at = now()
             returning version",
            &[&t, &id, &display_name, &external_id, &resource],
        )
        .await?
        .get(0))
}

/// Adds and removes members of a group, one statement each whatever their number.
pub async fn change_members(
    tx: &Transaction<'_>,
    t: &str,
    id: &str,
    add: &[String],
    remove: &[String],
) -> Result<(), tokio_postgres::Error> {
    if !remove.is_empty() {
        tx.execute(
            "delete from scim_group_members
              where tenant_id = $1 and group_id = $2 and user_id = any($3::text[])",
            &[&t, &id, &remove],
        )
        .await?;
    }
    if !add.is_empty() {
        tx.execute(
            "insert into scim_group_members (tenant_id, group_id, user_id)
             select $1, $2, unnest($3::text[]) on conflict do nothing",
            &[&t, &id, &add],
        )
        .await?;
    }
    Ok(())
}

/// Deletes a group and its member rows. False when it did not exist.
pub async fn delete_group(
    tx: &Transaction<'_>,
    t: &str,
    id: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .execute(
            "delete from scim_groups where tenant_id = $1 and group_id = $2",
            &[&t, &id],
        )
        .await?
        == 1)
}

/// Locks the users and groups a batch of provider writes names, each set in id order (the
/// order every writer of the tenant takes them in, before the outbox sequence row).
pub async fn lock_rows(
    tx: &Transaction<'_>,
    t: &str,
    users: &[String],
    groups: &[String],
) -> Result<(), tokio_postgres::Error> {
    if !users.is_empty() {
        super::statements::query_typed(
            tx,
            "select 1 from users where tenant_id = $1 and user_id = any($2)
              order by user_id for update",
            &[(&t, Type::TEXT), (&users, Type::TEXT_ARRAY)],
        )
        .await?;
    }
    if !groups.is_empty() {
        super::statements::query_typed(
            tx,
            "select 1 from scim_groups where tenant_id = $1 and group_id = any($2)
              order by group_id for update",
            &[(&t, Type::TEXT), (&groups, Type::TEXT_ARRAY)],
        )
        .await?;
    }
    Ok(())
}
