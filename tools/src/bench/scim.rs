//! scim: the SCIM provider on one tenant with 100,000 users. Requests per second and p99 of
//! `GET /Users?filter=userName eq "..."` through the service (HTTP, token, scoped
//! transaction, compiled filter, JSON) against the bare lookup of the same user in
//! PostgreSQL (one statement on a pooled connection); and of `PATCH /Users/{id}` (the whole
//! unit of work: lock, PatchOp, idempotency row, users upsert, `user_changed` outbox row,
//! readiness mark, wake-up) against the bare SQL update of the same user. The same number
//! of concurrent clients on each side, interleaved rounds, random users.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::harness::{fail, percentile, pg, BenchWorld, ServiceProcess};
use super::{check, BenchError, Ctx, Figure, ScenarioReport};
use enablement::actors::TenantId;

struct Sizes {
    users: i64,
    clients: usize,
    round: Duration,
    rounds: usize,
}

async fn seed(world: &BenchWorld, t: &TenantId, users: i64) -> Result<String, BenchError> {
    world.register(std::slice::from_ref(t)).await?;
    let store = world.store().await?;
    let token = enablement::tenants::rotate_scim_token(&store, t)
        .await
        .map_err(fail)?;
    let sql = format!(
        "insert into users (tenant_id, user_id, user_name, email, role, external_id, active,
                            scim, version, source_occurred_at, source_event_id)
           select '{t}', 'u' || g, 'user' || g || '@acme.test', 'user' || g || '@acme.test',
                  'rep', 'hr-' || g, true,
                  jsonb_build_object(
                      'schemas', jsonb_build_array('urn:ietf:params:scim:schemas:core:2.0:User'),
                      'id', 'u' || g, 'userName', 'user' || g || '@acme.test',
                      'externalId', 'hr-' || g, 'active', true,
                      'name', jsonb_build_object('givenName', 'User', 'familyName', 'N' || g),
                      'emails', jsonb_build_array(jsonb_build_object(
                          'value', 'user' || g || '@acme.test', 'type', 'work', 'primary', true))),
                  1, now() - interval '1 day', 'seed'
             from generate_series(1, {users}) g;
         analyze users;"
    );
    world.owner.batch_execute(&sql).await.map_err(pg)?;
    Ok(token)
}

/// Runs `clients` loops of `op` for `round`; returns the rate and the sorted latencies (ms).
async fn drive<F, Fut>(
    clients: usize,
    round: Duration,
    op: F,
) -> Result<(f64, Vec<f64>), BenchError>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    // Every round draws other users than the one before (a PATCH repeating the last one's
    // value would change nothing).
    static ROUND: AtomicU64 = AtomicU64::new(1);
    let round_seed = ROUND
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x2545_f491_4f6c_dd1d);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let op = op.clone();
        let counter = counter.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (c as u64 * 0x1234_5678) ^ round_seed;
            while started.elapsed() < round {
                // xorshift: a cheap random user per request
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = Instant::now();
                op(c, seed).await?;
                lat.push(at.elapsed().as_secs_f64() * 1000.0);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, BenchError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.map_err(fail)??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((counter.load(Ordering::Relaxed) as f64 / secs, all))
}

/// An HTTP/1.1 keep-alive connection of the load generator.
struct RawHttp {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    host: String,
}

impl RawHttp {
    async fn connect(addr: &str) -> Result<Self, BenchError> {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
        stream.set_nodelay(true).map_err(fail)?;
        Ok(Self {
            stream: tokio::io::BufStream::new(stream),
            host: addr.to_owned(),
        })
    }

    /// One request; the status and the body. A connection the service closed while it was
    /// idle (its keep-alive bound) is opened again once.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        match self.call_once(method, path, token, body).await {
            Ok(answer) => Ok(answer),
            Err(_) => {
                *self = Self::connect(&self.host.clone()).await?;
                self.call_once(method, path, token, body).await
            }
        }
    }

    /// One request on the open connection (the answer must carry `content-length`).
    async fn call_once(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), BenchError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n",
            self.host
        );
        if let Some(b) = body {
            head.push_str(&format!(
                "content-type: application/scim+json\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await.map_err(fail)?;
        if let Some(b) = body {
            self.stream.write_all(b.as_bytes()).await.map_err(fail)?;
        }
        self.stream.flush().await.map_err(fail)?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await.map_err(fail)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.map_err(fail)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(fail)?;
                }
            }
        }
        let mut buf = vec![0u8; length];
        self.stream.read_exact(&mut buf).await.map_err(fail)?;
        Ok((status, buf))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    let sizes = if ctx.smoke() {
        Sizes {
            users: 2_000,
            clients: 4,
            round: Duration::from_secs(1),
            rounds: 1,
        }
    } else {
        Sizes {
            users: 100_000,
            clients: 8,
            round: Duration::from_secs(5),
            rounds: 3,
        }
    };
    let world = BenchWorld::new(ctx.config, ctx.config_path, "scim", ctx.keep).await?;
    let t = world.tenant("scim")?;
    let seeding = Instant::now();
    let token = seed(&world, &t, sizes.users).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();
    let mut checks = vec![check(
        world
            .scalar(&format!(
                "select count(*) from users where tenant_id = '{t}'"
            ))
            .await?
            == sizes.users,
        format!("{} users seeded", sizes.users),
    )?];
    let mut svc = ServiceProcess::start(&world, "api", &[])?;
    svc.wait_ready(0, Duration::from_secs(60)).await?;
    // The bare side: pooled connections of the owner (no RLS, no transaction).
    let mut bare_conns = Vec::new();
    for _ in 0..sizes.clients {
        let (c, conn) =
            tokio_postgres::connect(&world.config.postgres.migrate_url, tokio_postgres::NoTls)
                .await
                .map_err(pg)?;
        tokio::spawn(conn);
        bare_conns.push(Arc::new(c));
    }
    let pool = Arc::new(bare_conns);
    // The load generator's side of HTTP kept minimal (one keep-alive connection per client,
    // requests written and answers read by hand): its CPU is not the service's, and on a
    // small machine a heavy client would be charged to the service's figure alone.
    let addr = svc.base_url.trim_start_matches("http://").to_owned();
    let mut opened = Vec::new();
    for _ in 0..sizes.clients {
        opened.push(tokio::sync::Mutex::new(RawHttp::connect(&addr).await?));
    }
    let conns = Arc::new(opened);
    let base_path: &'static str = Box::leak(format!("/scim/v2/{t}").into_boxed_str());
    let users = sizes.users as u64;

    // The bare sides: the same statement in the tenant-scoped transaction (the service role
    // under row-level security, as in the aggregate scenario), and, for reference only, one
    // statement on a pooled owner connection (no scope, no transaction).
    let store = Arc::new(world.store().await?);
    let bare_get = {
        let (store, t) = (store.clone(), t.clone());
        move |_c: usize, r: u64| {
            let (store, t) = (store.clone(), t.clone());
            async move {
                let name = format!("USER{}@acme.test", 1 + r % users);
                let found = store
                    .scoped(&t, move |tx, t| {
                        Box::pin(async move {
                            tx.query_opt(
                                "select scim, version, created_at, updated_at from users
                                  where tenant_id = $1 and user_name_lower = lower($2)
                                    and not deleted",
                                &[&t, &name],
                            )
                            .await
                        })
                    })
                    .await
                    .map_err(fail)?;
                found
                    .map(|_| ())
                    .ok_or_else(|| fail("bare lookup found nobody"))
            }
        }
    };
    let raw_get = {
        let (pool, t) = (pool.clone(), t.to_string());
        move |_c: usize, r: u64| {
            let (pool, t) = (pool.clone(), t.clone());
            async move {
                let c = &pool[(r % pool.len() as u64) as usize];
                let name = format!("USER{}@acme.test", 1 + r % users);
                let row = c
                    .query_opt(
                        "select scim, version, created_at, updated_at from users
                          where tenant_id = $1 and user_name_lower = lower($2) and not deleted",
                        &[&t, &name],
                    )
                    .await
                    .map_err(pg)?;
                row.map(|_| ())
                    .ok_or_else(|| fail("raw lookup found nobody"))
            }
        }
    };
    let svc_get = {
        let (conns, token) = (conns.clone(), token.clone());
        move |c: usize, r: u64| {
            let (conns, token) = (conns.clone(), token.clone());
            async move {
                let filter = format!("userName eq \"USER{}@acme.test\"", 1 + r % users);
                let path = format!("{base_path}/Users?filter={}", encode(&filter));
                let (status, body) = conns[c]
                    .lock()
                    .await
                    .call("GET", &path, &token, None)
                    .await?;
                if status != 200 {
                    return Err(fail(format!("GET answered {status}")));
                }
                let v: Value = serde_json::from_slice(&body).map_err(fail)?;
                (v["totalResults"] == 1)
                    .then_some(())
                    .ok_or_else(|| fail(format!("filter found {}", v["totalResults"])))
            }
        }
    };
    let bare_update = {
        let (store, t) = (store.clone(), t.clone());
        move |_c: usize, r: u64| {
            let (store, t) = (store.clone(), t.clone());
            async move {
                let id = format!("u{}", 1 + r % users);
                let title = format!("t{r}");
                let n = store
                    .scoped(&t, move |tx, t| {
                        Box::pin(async move {
                            tx.execute(
                                "update users set scim = jsonb_set(scim, '{title}', to_jsonb($3::text)),
                                        version = version + 1, updated_at = now()
                                  where tenant_id = $1 and user_id = $2",
                                &[&t, &id, &title],
                            )
                            .await
                        })
                    })
                    .await
                    .map_err(fail)?;
                (n == 1)
                    .then_some(())
                    .ok_or_else(|| fail("bare update found nobody"))
            }
        }
    };
    let svc_patch = {
        let (conns, token) = (conns.clone(), token.clone());
        move |c: usize, r: u64| {
            let (conns, token) = (conns.clone(), token.clone());
            async move {
                let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                  "Operations": [{"op": "replace", "path": "title", "value": format!("p{r}")}]})
                .to_string();
                let path = format!("{base_path}/Users/u{}", 1 + r % users);
                let (status, _) = conns[c]
                    .lock()
                    .await
                    .call("PATCH", &path, &token, Some(&body))
                    .await?;
                (status == 200)
                    .then_some(())
                    .ok_or_else(|| fail(format!("PATCH answered {status}")))
            }
        }
    };

    // Warm-up of each side, then interleaved rounds.
    let warm = Duration::from_millis(500);
    drive(sizes.clients, warm, bare_get.clone()).await?;
    drive(sizes.clients, warm, svc_get.clone()).await?;
    let raw = drive(sizes.clients, sizes.round, raw_get.clone()).await?.0;
    let (mut bg, mut sg, mut bu, mut sp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut sg_lat, mut sp_lat) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        bg.push(drive(sizes.clients, sizes.round, bare_get.clone()).await?.0);
        let (rate, lat) = drive(sizes.clients, sizes.round, svc_get.clone()).await?;
        sg.push(rate);
        sg_lat.extend(lat);
        bu.push(
            drive(sizes.clients, sizes.round, bare_update.clone())
                .await?
                .0,
        );
        let (rate, lat) = drive(sizes.clients, sizes.round, svc_patch.clone()).await?;
        sp.push(rate);
        sp_lat.extend(lat);
    }
    // One client writing in sequence, as an identity provider's provisioning job often does.
    let (_, mut seq_lat) = drive(1, sizes.round, svc_patch.clone()).await?;
    seq_lat.sort_by(f64::total_cmp);
    svc.stop(Duration::from_secs(30));
    sg_lat.sort_by(f64::total_cmp);
    sp_lat.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (bg, sg, bu, sp) = (mean(&bg), mean(&sg), mean(&bu), mean(&sp));
    // Every PATCH went through the unit of work: one user_changed row each.
    let outbox = world
        .scalar(&format!(
            "select count(*) from outbox where tenant_id = '{t}' and topic = 'user_changed'"
        ))
        .await?;
    checks.push(check(
        outbox as usize >= sp_lat.len() + seq_lat.len(),
        format!(
            "{outbox} user_changed outbox rows for {} PATCHes",
            sp_lat.len()
        ),
    )?);
    let figures = vec![
        Figure::plain(
            "raw lookup (owner, one statement, no scope; reference)",
            raw,
            "req/s",
        ),
        Figure::plain(
            "bare lookup in the tenant's scoped transaction",
            bg,
            "req/s",
        ),
        Figure::plain("SCIM GET ?filter=userName eq", sg, "req/s"),
        Figure::at_least("SCIM GET / bare lookup", sg / bg, "ratio", 0.5),
        Figure::at_most("SCIM GET p99", percentile(&sg_lat, 99.0), "ms", 20.0),
        Figure::plain(
            "bare update in the tenant's scoped transaction",
            bu,
            "req/s",
        ),
        Figure::plain("SCIM PATCH (replace title)", sp, "req/s"),
        Figure::at_least("SCIM PATCH / bare update", sp / bu, "ratio", 0.5),
        Figure::plain("SCIM PATCH / bare lookup", sp / bg, "ratio"),
        Figure::at_most("SCIM PATCH p99", percentile(&sp_lat, 99.0), "ms", 20.0),
        Figure::plain(
            "SCIM PATCH p99, one client in sequence",
            percentile(&seq_lat, 99.0),
            "ms",
        ),
        Figure::plain("seeding", seed_secs, "s"),
    ];
    world.cleanup().await;
    Ok(ScenarioReport {
        scenario: "scim".into(),
        size: format!(
            "{} users, {} concurrent clients per side, {} rounds of {:?}",
            sizes.users, sizes.clients, sizes.rounds, sizes.round
        ),
        seconds: 0.0,
        checks,
        figures,
        notes: vec!["bare: the same lookup (update) in the tenant-scoped transaction as the service role, as the aggregate scenario measures its bare query; service: HTTP with the SCIM token, the scoped transaction, the compiled filter or the PATCH unit of work, the JSON answer".into()],
    })
}
