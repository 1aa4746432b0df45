//! `hiresfix serve` against a hostile client: requests a web page can send (text/plain, form,
//! multipart, none) run nothing on any state-changing endpoint; content types are parsed, not
//! searched; empty bodies, huge prompts, BREAK storms, deep parentheses and oversized options
//! are 4xx with one short line; half-open connections time out without holding the server; a
//! flag reads as A1111 reads it; the native endpoint runs a `[model] merge`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::serve::{decode, events, get, images, info, post, Server};

/// (status, body) of a POST with exactly these headers (ureq adds no Content-Type itself).
fn send(
    url: &str,
    content_type: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = ureq::post(url).timeout(Duration::from_secs(300));
    if let Some(kind) = content_type {
        request = request.set("Content-Type", kind);
    }
    for (k, v) in headers {
        request = request.set(k, v);
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// A refusal as the corpus wants it: a 4xx, and a JSON `detail` of one line ≤ 300 characters
/// that contains `names`.
fn assert_refused(case: &str, (status, text): &(u16, String), names: &str) {
    assert!((400..500).contains(status), "{case}: {status} {text}");
    let body: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("{case}: {text}"));
    let detail = body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: {text}"));
    assert!(!detail.contains('\n'), "{case}: {detail}");
    assert!(
        detail.chars().count() <= 300,
        "{case}: {} chars",
        detail.len()
    );
    assert!(
        detail.to_lowercase().contains(&names.to_lowercase()),
        "{case}: `{names}` not in {detail}"
    );
    assert!(!detail.contains("panicked"), "{case}: {detail}");
}

/// Every endpoint that changes something (or runs a job).
const STATE_CHANGING: &[&str] = &[
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/sdapi/v1/options",
    "/sdapi/v1/options/",
    "/sdapi/v1/refresh-checkpoints",
    "/sdapi/v1/refresh-loras",
    "/sdapi/v1/refresh-vae",
    "/sdapi/v1/refresh-embeddings",
    "/sdapi/v1/interrupt",
    "/sdapi/v1/skip",
    "/sdapi/v1/png-info",
    "/hiresfix/v1/generate",
];

/// What a web page can send anywhere without a preflight: (name, content type, body, headers).
type Style = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
);
const BROWSER: &[(&str, &str)] = &[("Origin", "http://evil.example")];
const BROWSER_STYLES: &[Style] = &[
    (
        "text/plain",
        Some("text/plain"),
        Some(r#"{"sd_vae": "None", "hostile": 1, "prompt": "x"}"#),
        BROWSER,
    ),
    (
        "form",
        Some("application/x-www-form-urlencoded"),
        Some("hostile=1&prompt=x"),
        BROWSER,
    ),
    (
        "multipart",
        Some("multipart/form-data; boundary=xyz"),
        Some("--xyz\r\nContent-Disposition: form-data; name=\"hostile\"\r\n\r\n1\r\n--xyz--\r\n"),
        BROWSER,
    ),
    ("no body", None, None, BROWSER),
    (
        "no body, fetch metadata",
        None,
        None,
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
        ],
    ),
];

/// Waits until the running job has sampled `steps` steps of its pass.
fn wait_for_step(server: &Server, steps: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let step = get(server, "/sdapi/v1/progress")["state"]["sampling_step"]
            .as_u64()
            .unwrap();
        if step >= steps {
            return step;
        }
        assert!(
            Instant::now() < deadline,
            "the job never reached step {steps}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn browser_style_requests_to_state_changing_endpoints_run_nothing() {
    let server = Server::start("serve-browser", &["--max-steps", "400"]);
    // A second model appears: only a real refresh may list it.
    let models = server._scratch.path("models");
    std::os::unix::fs::symlink(server.model(), models.join("second.safetensors")).unwrap();
    // A long job runs meanwhile: no browser-style interrupt may stop it.
    let url = server.url("/sdapi/v1/txt2img");
    let runner = std::thread::spawn(move || {
        send(
            &url,
            Some("application/json"),
            Some(r#"{"steps": 400, "seed": 5}"#),
            &[],
        )
    });
    wait_for_step(&server, 1);
    let options_before = get(&server, "/sdapi/v1/options");
    let mut cases = 0;
    for path in STATE_CHANGING {
        for (style, kind, body, headers) in BROWSER_STYLES {
            let answer = send(&server.url(path), *kind, *body, headers);
            let case = format!("{style} to {path}");
            assert_eq!(answer.0, 415, "{case}: {}", answer.1);
            assert_refused(&case, &answer, "application/json");
            cases += 1;
        }
        // A script's bare POST is refused too where a body is expected.
        if !["interrupt", "skip", "refresh"]
            .iter()
            .any(|p| path.contains(p))
        {
            let answer = send(&server.url(path), None, None, &[]);
            assert_refused(&format!("bare POST to {path}"), &answer, "Content-Type");
            cases += 1;
        }
    }
    assert_eq!(cases, 66);
    // Nothing ran: the job is still sampling, not interrupted; the options and the model list
    // are as they were.
    let progress = get(&server, "/sdapi/v1/progress");
    assert_eq!(progress["state"]["interrupted"], false, "{progress}");
    assert_eq!(progress["state"]["job_count"], 1, "{progress}");
    assert_eq!(get(&server, "/sdapi/v1/options"), options_before);
    assert_eq!(
        get(&server, "/sdapi/v1/sd-models")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // What a script sends does run: a bare interrupt (webuiapi's `requests.post(url)`) stops
    // the job, a JSON refresh lists the new model.
    let (status, text) = send(&server.url("/sdapi/v1/interrupt"), None, None, &[]);
    assert_eq!(status, 200, "{text}");
    let (status, text) = runner.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let response: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info(&response)["interrupted"], true);
    let (status, _) = post(&server, "/sdapi/v1/refresh-checkpoints", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(
        get(&server, "/sdapi/v1/sd-models")
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn content_types_are_parsed_and_empty_bodies_refused() {
    let server = Server::start("serve-content-type", &[]);
    let txt2img = server.url("/sdapi/v1/txt2img");
    let options = server.url("/sdapi/v1/options");
    let refused: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "json as a parameter",
            "text/plain;json=1",
            Some("{}"),
            "text/plain",
        ),
        (
            "jsonx",
            "application/jsonx",
            Some("{}"),
            "application/jsonx",
        ),
        (
            "json-patch",
            "application/json-patch+json",
            Some("{}"),
            "json-patch",
        ),
        (
            "a list of types",
            "application/json, text/plain",
            Some("{}"),
            "media type",
        ),
        ("no subtype", "json", Some("{}"), "media type"),
        (
            "toml to an A1111 endpoint",
            "application/toml",
            Some("{}"),
            "application/toml",
        ),
        ("empty body", "application/json", Some(""), "empty"),
        (
            "whitespace body",
            "application/json",
            Some(" \r\n\t "),
            "empty",
        ),
        ("json null", "application/json", Some("null"), "JSON object"),
        (
            "json list",
            "application/json",
            Some("[1, 2]"),
            "JSON object",
        ),
        (
            "not json",
            "application/json",
            Some("{prompt: x}"),
            "not JSON",
        ),
        ("nested 10,000 deep", "application/json", None, "not JSON"),
    ];
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for (case, kind, body, names) in refused {
        let body = body.unwrap_or(&deep);
        for url in [&txt2img, &options] {
            assert_refused(case, &send(url, Some(kind), Some(body), &[]), names);
        }
    }
    // Parameters and case are fine; a body-less endpoint takes `{}` and `null`, not an empty
    // JSON body.
    let skip = server.url("/sdapi/v1/skip");
    for kind in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json ; charset=\"UTF-8\"",
    ] {
        assert_eq!(send(&skip, Some(kind), Some("{}"), &[]).0, 200, "{kind}");
    }
    assert_eq!(
        send(&skip, Some("application/json"), Some("null"), &[]).0,
        200
    );
    assert_refused(
        "empty JSON to skip",
        &send(&skip, Some("application/json"), Some(""), &[]),
        "empty",
    );
    assert_refused(
        "a body without a type",
        &send(&skip, None, Some("{}"), &[]),
        "Content-Type",
    );
    let native = server.url("/hiresfix/v1/generate");
    assert_refused(
        "empty TOML",
        &send(&native, Some("application/toml"), Some("\n"), &[]),
        "empty",
    );
    assert_refused(
        "text/toml",
        &send(&native, Some("text/x-toml"), Some("seed = 1"), &[]),
        "application/toml",
    );
}

#[test]
fn enable_hr_as_text_or_number_runs_the_hires_pass() {
    let server = Server::start("serve-flags", &[]);
    // DEFAULTS: pass 1 is 64 px; hr_scale 1.5 makes the hires pass 96 px.
    let width = |flag: Value| {
        let body = json!({"seed": 3, "enable_hr": flag, "hr_scale": 1.5, "tiling": "off"});
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
        assert_eq!(status, 200, "{flag}: {response}");
        decode(&images(&response)[0]).0
    };
    assert_eq!(width(json!("1")), 96);
    assert_eq!(width(json!("on")), 96);
    assert_eq!(width(json!(1)), 96);
    assert_eq!(width(json!("false")), 64);
    for bad in [json!("maybe"), json!(2), json!([true])] {
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &json!({"enable_hr": bad}));
        assert_eq!(
            (status, response["field"].as_str()),
            (422, Some("enable_hr")),
            "{response}"
        );
    }
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &json!({"send_images": "no"}));
    assert_eq!(status, 200);
    assert!(
        images(&response).is_empty(),
        "send_images \"no\" sent images"
    );
}

#[test]
fn a_4_mb_prompt_is_refused_at_once() {
    let server = Server::start("serve-big-prompt", &[]);
    // `<lora:` over and over: the tag scan's worst case, were it reached.
    let prompt = "<lora:a".repeat(4 * 1024 * 1024 / 7);
    let a1111 = json!({"prompt": prompt}).to_string();
    let native = json!({"prompt": prompt}).to_string();
    let toml = format!("prompt = \"{prompt}\"\n");
    for (case, path, kind, body) in [
        ("txt2img", "/sdapi/v1/txt2img", "application/json", &a1111),
        (
            "native JSON",
            "/hiresfix/v1/generate",
            "application/json",
            &native,
        ),
        (
            "native TOML",
            "/hiresfix/v1/generate",
            "application/toml",
            &toml,
        ),
    ] {
        let url = server.url(path);
        let clock = Instant::now();
        let answer = send(&url, Some(kind), Some(body), &[]);
        let took = clock.elapsed();
        assert_refused(case, &answer, "prompt");
        eprintln!("{case}: a 4 MB prompt refused in {took:?}");
        assert!(
            took < Duration::from_millis(100),
            "{case}: refused after {took:?}"
        );
    }
}

/// The process's soft limit on open files raised to fit `n` more sockets (up to the hard one).
fn room_for_sockets(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let want = n + 512;
    if limit.rlim_cur < want && limit.rlim_max >= want {
        limit.rlim_cur = want;
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

#[test]
fn half_open_connections_time_out_and_the_server_answers() {
    room_for_sockets(1000);
    let server = Server::start(
        "serve-half-open",
        &["--header-timeout", "0.5", "--body-timeout", "0.5"],
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let clock = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"GET /sdapi/v1/sampl").unwrap();
            stream
        })
        .collect();
    // Every one is closed by the server once its head is overdue (256 at a time: the rest
    // wait in the kernel's backlog).
    let mut answered = 0;
    for stream in &mut stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = [0u8; 64];
        match stream.read(&mut head) {
            Ok(0) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&head[..n]);
                assert!(
                    text.starts_with("HTTP/1.1 408"),
                    "a half-sent request got {text:?}"
                );
                answered += 1;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let closed_after = clock.elapsed();
    eprintln!("1000 half-open connections closed after {closed_after:?} ({answered} with a 408)");
    assert!(closed_after < Duration::from_secs(30), "{closed_after:?}");
    drop(stalled);
    let clock = Instant::now();
    let samplers = get(&server, "/sdapi/v1/samplers");
    let took = clock.elapsed();
    eprintln!("then GET /sdapi/v1/samplers answered in {took:?}");
    assert!(!samplers.as_array().unwrap().is_empty());
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // A body that stops half-way gets 408 once the body timeout has passed.
    let mut stream = TcpStream::connect(&address).unwrap();
    let head = format!("POST /sdapi/v1/options HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\"");
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("not all sent within 0.5 s"), "{text}");
    assert!(get(&server, "/sdapi/v1/options").get("a").is_none());
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_only() {
    // 96 files, 300 connections: accepting fails (EMFILE) until stalled ones time out.
    let server = Server::launch(
        "serve-emfile",
        &["--header-timeout", "0.5", "--max-connections", "1000"],
        Some(96),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 96 ")),
        "{limits}"
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"GET /sdapi/v1/sampl").unwrap();
            stream
        })
        .collect();
    for stream in &mut stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let closed = matches!(stream.read(&mut [0u8; 64]), Ok(0) | Err(_));
        assert!(closed, "a half-sent request was answered");
    }
    drop(stalled);
    let clock = Instant::now();
    let samplers = get(&server, "/sdapi/v1/samplers");
    let took = clock.elapsed();
    assert!(!samplers.as_array().unwrap().is_empty());
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
}

#[test]
fn options_are_bounded() {
    let server = Server::start("serve-options", &[]);
    let many: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("hostile_{i}"), json!(i)))
        .collect();
    let (status, response) = post(&server, "/sdapi/v1/options", &Value::Object(many));
    assert_eq!(
        (status, response["field"].as_str()),
        (413, Some("options")),
        "{response}"
    );
    let big = json!({"hostile_big": "x".repeat(100 * 1024)});
    let (status, response) = post(&server, "/sdapi/v1/options", &big);
    assert_eq!(
        (status, response["field"].as_str()),
        (413, Some("hostile_big")),
        "{response}"
    );
    let long_key = json!({"k".repeat(5000): 1});
    let (status, response) = post(&server, "/sdapi/v1/options", &long_key);
    assert_eq!(status, 422, "{response}");
    // Nothing of those was kept; ordinary unknown keys are.
    let kept = get(&server, "/sdapi/v1/options");
    assert!(kept.get("hostile_0").is_none() && kept.get("hostile_big").is_none());
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"show_progressbar": true}),
    );
    assert_eq!(status, 200);
    assert_eq!(get(&server, "/sdapi/v1/options")["show_progressbar"], true);
}

#[test]
fn client_errors_are_4xx_with_one_short_line() {
    let server = Server::start("serve-client-errors", &[]);
    let megabyte = "s".repeat(1024 * 1024);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "BREAK storm",
            json!({"prompt": "a BREAK ".repeat(2400), "steps": 1}),
            "prompt",
        ),
        (
            "9,000-deep parentheses",
            json!({"prompt": format!("{}a{}", "(".repeat(9000), ")".repeat(9000)), "steps": 1}),
            "prompt",
        ),
        (
            "1 MB sampler name",
            json!({"sampler_name": megabyte}),
            "sampler_name",
        ),
        (
            "1 MB scheduler",
            json!({"scheduler": megabyte}),
            "scheduler",
        ),
        (
            "1 MB hr_upscaler",
            json!({"enable_hr": true, "hr_upscaler": megabyte}),
            "hr_upscaler",
        ),
        (
            "1 MB model override",
            json!({"override_settings": {"sd_model_checkpoint": megabyte}}),
            "sd_model_checkpoint",
        ),
        (
            "1 MB negative prompt",
            json!({"negative_prompt": megabyte}),
            "negative_prompt",
        ),
        ("steps 1e300", json!({"steps": 1e300}), "steps"),
        ("seed as a list", json!({"seed": [1, 2]}), "seed"),
        ("width as words", json!({"width": megabyte}), "width"),
        ("negative batch", json!({"batch_size": -1}), "batch_size"),
        (
            "unknown long model",
            json!({"override_settings": {"sd_model_checkpoint": "m".repeat(900)}}),
            "sd_model_checkpoint",
        ),
    ];
    for (case, body, names) in &cases {
        let (status, response) = post(&server, "/sdapi/v1/txt2img", body);
        assert_refused(case, &(status, response.to_string()), names);
    }
    // A 1 MB VAE or checkpoint option is refused the same way.
    let (status, response) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_vae": "v".repeat(900)}),
    );
    assert_refused("long VAE option", &(status, response.to_string()), "sd_vae");
    // The server goes on.
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &json!({"seed": 1}));
    assert_eq!(status, 200, "{response}");
}

#[test]
fn a_native_merge_request_runs() {
    let server = Server::start("serve-merge", &[]);
    let models = server._scratch.path("models");
    std::os::unix::fs::symlink(server.model(), models.join("other.safetensors")).unwrap();
    let (status, _) = post(&server, "/sdapi/v1/refresh-checkpoints", &json!({}));
    assert_eq!(status, 200);
    let profile = r#"
seed = 2
prompt = "a merged castle"
[model]
merge = [{ checkpoint = "tiny", weight = 0.5 }, { checkpoint = "other", weight = 0.5 }]
[[pass]]
width = 32
height = 32
steps = 2
"#;
    let (status, text) = send(
        &server.url("/hiresfix/v1/generate"),
        Some("application/toml"),
        Some(profile),
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let events = events(&text);
    assert_eq!(
        events.last().map(|e| e.0.as_str()),
        Some("done"),
        "{events:?}"
    );
    let image = events.iter().find(|(k, _)| k == "image").expect("an image");
    let (w, h, _, parameters) = decode(image.1["png"].as_str().unwrap());
    assert_eq!((w, h), (32, 32));
    assert!(parameters.contains("a merged castle"), "{parameters}");
    // Both a checkpoint and a merge: refused before it is queued, naming the key.
    let both = profile.replace("[model]", "[model]\ncheckpoint = \"tiny\"");
    let answer = send(
        &server.url("/hiresfix/v1/generate"),
        Some("application/toml"),
        Some(&both),
        &[],
    );
    assert_refused("checkpoint and merge", &answer, "merge");
}

#[test]
fn connection_settings_out_of_range_are_refused_at_start() {
    let scratch = crate::common::Scratch::new("serve-settings");
    // A --models folder that is not there: were the flag taken, the start would fail on it
    // (naming --models) instead of serving.
    for (flag, value) in [
        ("--header-timeout", "0"),
        ("--body-timeout", "NaN"),
        ("--header-timeout", "1e300"),
        ("--max-connections", "0"),
    ] {
        let out = crate::common::hiresfix(
            &scratch.0,
            &["serve", "--models", "/nonexistent-models", flag, value],
            &[],
        );
        let stderr = crate::common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {stderr}");
        let line = stderr.trim();
        assert!(
            !line.contains('\n') && line.len() <= 300,
            "{flag} {value}: {stderr}"
        );
        assert!(line.contains(flag), "{flag} {value}: {stderr}");
    }
}
