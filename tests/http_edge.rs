//! The HTTP edge against a hostile client, on the real binary: a client that sends its
//! request head slowly is cut off, an oversized body is refused before it is sent, one
//! address cannot hold more than its share of requests, a request cannot run forever,
//! failed authentications are budgeted per address (429 with Retry-After), a token for a
//! tenant that does not exist costs no database work, and operational detail (`/metrics`,
//! the detailed `/readyz`) needs the operator token or the internal listener.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{free_port, tenant, Service, TestEnv};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

/// Reads from `stream` until the server closes it; the bytes read, or None at `deadline`.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    deadline: Duration,
) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(deadline, stream.read_to_end(&mut out)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_client_is_cut_off_limited_and_budgeted() {
    let env = TestEnv::new().await;
    let a = tenant("edge");
    let token = env.add_tenant(&a).await;
    let store = env.store().await;
    // An upstream that takes 5 s per answer keeps progress syncs in flight.
    let sim = common::start_sim(enablement_tools::simulator::SimSettings {
        faults: enablement_tools::simulator::Faults {
            latency_ms: 5_000,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let secret = enablement_tools::simulator::dev_secret(a.as_str());
    store
        .set_upstream_credentials(&a, a.as_str(), &secret)
        .await
        .unwrap();
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__MINDTICKLE__BASE_URL", sim.as_str()),
            ("ENABLEMENT__HTTP__HEADER_READ_TIMEOUT_MS", "500"),
            ("ENABLEMENT__HTTP__REQUEST_TIMEOUT_MS", "1500"),
            ("ENABLEMENT__HTTP__MAX_CONCURRENT_REQUESTS_PER_CLIENT", "2"),
            ("ENABLEMENT__HTTP__AUTH_FAILURES_PER_MIN", "5"),
            ("ENABLEMENT__HTTP__MAX_BODY_BYTES", "4096"),
        ],
    );
    svc.wait_ready(&[&a]).await;
    env.provision(&a, "edge-e1", "u1", "u1@edge.test").await;
    let addr = svc.base_url.trim_start_matches("http://").to_owned();

    // 1. A request head that never completes: the connection is closed after the bound.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.is_some(), "a slow-header connection must be closed");
    assert!(
        !answer.unwrap().contains("200 OK"),
        "an incomplete head is never served"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // 2. A body over the limit is refused on its Content-Length, before it is sent.
    let mut big = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/tenants/{a}/quiz-results HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    big.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), big.read(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let status_line = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(status_line.contains("413"), "{status_line}");

    // 3. Three slow requests at once from one address: two run (and hit the request
    //    timeout, 408), the third is refused at once (429).
    let path = format!("{}/api/tenants/{a}/users/u1/sync-progress", svc.base_url);
    let c = client_from([127, 0, 0, 1]);
    let call = |delay_ms: u64| {
        let (c, path, token) = (c.clone(), path.clone(), token.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let r = c.post(&path).bearer_auth(&token).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
            )
        }
    };
    // The third starts once the first two are surely in flight (they take 1.5 s).
    let (one, two, three) = tokio::join!(call(0), call(0), call(500));
    let mut statuses = vec![one.0, two.0, three.0];
    statuses.sort();
    assert_eq!(statuses, vec![408, 408, 429], "{one:?} {two:?} {three:?}");
    assert_eq!(three.0, 429);

    // 4. Failed authentications from one address: five are answered 401, then that
    //    address gets 429 with Retry-After, even with a valid token, without the token
    //    being looked at. Another address is not affected.
    let bad = client_from([127, 0, 0, 3]);
    let users = format!("{}/api/tenants/{a}/users", svc.base_url);
    for i in 0..5 {
        let r = bad
            .get(&users)
            .bearer_auth(format!("garbage-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "attempt {i}");
    }
    let r = bad
        .get(&users)
        .bearer_auth("garbage-6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let r = bad.get(&users).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        429,
        "a blocked address is refused before its token is checked"
    );
    let good = client_from([127, 0, 0, 4]);
    let r = good.get(&users).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let refused = svc.metrics().await;
    assert!(
        refused
            .iter()
            .any(|(k, v)| k.contains("enablement_http_refused_total")
                && k.contains("auth_failures")
                && *v >= 2.0),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_unknown_tenants_or_the_wrong_shape_cost_no_database_work() {
    let env = TestEnv::new().await;
    let a = tenant("nodb");
    env.add_tenant(&a).await;
    let svc = Service::start(
        &env,
        &[
            ("ENABLEMENT__HTTP__AUTH_FAILURES_PER_MIN", "100000"),
            ("ENABLEMENT__HTTP__REQUEST_TIMEOUT_MS", "2000"),
        ],
    );
    svc.wait_ready(&[&a]).await;
    // Hold an exclusive lock on the token table: any request that checks a token against
    // it now waits (and times out, 408). Requests that must not touch it answer at once.
    let mut owner =
        tokio_postgres::connect(&env.config.postgres.migrate_url, tokio_postgres::NoTls)
            .await
            .map(|(c, conn)| {
                tokio::spawn(conn);
                c
            })
            .unwrap();
    let lock = owner.transaction().await.unwrap();
    lock.batch_execute("lock table tenant_secrets in access exclusive mode")
        .await
        .unwrap();

    let c = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..200 {
        let ghost = format!("ghost{i}-{}", std::process::id());
        let forged = format!("ent_{ghost}.{}", "a".repeat(64));
        let r = c
            .get(format!("{}/api/tenants/{ghost}/users", svc.base_url))
            .bearer_auth(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "unknown tenant {ghost}");
        let r = c
            .get(format!("{}/api/tenants/{a}/users", svc.base_url))
            .bearer_auth(format!("not-a-token-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "garbage token");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "400 refusals took {:?}: they waited on the locked table",
        started.elapsed()
    );
    // The control: a well-formed token of a tenant that exists is checked in the table,
    // so it waits on the lock until the request timeout.
    let forged = format!("ent_{a}.{}", "b".repeat(64));
    let r = c
        .get(format!("{}/api/tenants/{a}/users", svc.base_url))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        408,
        "the control request must have reached the table"
    );
    lock.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_detail_need_the_operator_token_or_the_internal_listener() {
    let env = TestEnv::new().await;
    let a = tenant("ops");
    env.add_tenant(&a).await;
    let internal = format!("127.0.0.1:{}", free_port());
    let svc = Service::start(
        &env,
        &[("ENABLEMENT__HTTP__INTERNAL_LISTEN", internal.as_str())],
    );
    svc.wait_ready(&[&a]).await;
    let c = reqwest::Client::new();
    let public = |path: &str| c.get(format!("{}{path}", svc.base_url));

    let r = public("/metrics").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = public("/metrics")
        .bearer_auth(&svc.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("enablement_"));

    let r = public("/readyz").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"ready": true}),
        "no tenant ids or errors in public"
    );
    let (_, detailed) = svc.get("/readyz").await.unwrap();
    assert!(
        detailed.contains("\"checks\"") && detailed.contains("\"tenants\""),
        "{detailed}"
    );

    // The internal listener: detail without a token, and nothing else.
    let r = c
        .get(format!("http://{internal}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("http://{internal}/readyz"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["checks"]["postgres"]["ok"] == true, "{body}");
    let r = c
        .get(format!("http://{internal}/api/tenants/{a}/users"))
        .bearer_auth(&svc.operator_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "the internal listener serves no API"
    );
}
