//! `hiresfix serve` on loopback: the request bodies real A1111 clients send, determinism and
//! equality with `generate`, interrupt, a load test against the bounded queue, credentials,
//! limits, the listing endpoints and the native streaming endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{repo, tiny_ldm, Scratch};
use base64::Engine;
use serde_json::{json, Value};

/// Small defaults for what a request leaves unset (A1111's 512 px × 50 steps would take
/// minutes on the CPU test model).
const DEFAULTS: &str = r#"
[[pass]]
width = 64
height = 64
steps = 3

[[pass]]
steps = 2
denoise = 0.5
"#;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) _scratch: Scratch,
}

impl Server {
    pub(crate) fn start(name: &str, extra: &[&str]) -> Server {
        Self::launch(name, extra, None)
    }

    /// [`Server::start`], the process allowed at most `files` open files (`ulimit -n`) when given.
    pub(crate) fn launch(name: &str, extra: &[&str], files: Option<u32>) -> Server {
        let scratch = Scratch::new(name);
        let cache = repo().join("target/test-cache");
        Self::spawn(
            scratch,
            &[("tiny.safetensors", tiny_ldm())],
            extra,
            files,
            cache,
        )
    }

    /// A server whose `--models` holds `models` (file name, file), hashing into a cache of
    /// its own (as a first start-up does).
    pub(crate) fn with_models(name: &str, models: &[(&str, PathBuf)]) -> Server {
        let scratch = Scratch::new(name);
        let cache = scratch.path("cache");
        Self::spawn(scratch, models, &[], None, cache)
    }

    fn spawn(
        scratch: Scratch,
        files_in_models: &[(&str, PathBuf)],
        extra: &[&str],
        files: Option<u32>,
        cache: PathBuf,
    ) -> Server {
        let models = scratch.path("models");
        std::fs::create_dir_all(&models).unwrap();
        for (name, file) in files_in_models {
            std::os::unix::fs::symlink(file, models.join(name)).unwrap();
        }
        let defaults = scratch.write("defaults.toml", DEFAULTS);
        let listen: &[&str] = match extra.contains(&"--listen") {
            true => &[],
            false => &["--listen", "127.0.0.1:0"],
        };
        let mut command = match files {
            None => Command::new(env!("CARGO_BIN_EXE_hiresfix")),
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$@\""), "sh"])
                    .arg(env!("CARGO_BIN_EXE_hiresfix"));
                sh
            }
        };
        let mut child = command
            .args(["-q", "serve", "--device", "cpu"])
            .args(listen)
            .arg("--models")
            .arg(&models)
            .arg("--defaults")
            .arg(&defaults)
            .args(extra)
            .env_remove("HIRESFIX_PLUGIN_PATH")
            .env("HIRESFIX_CACHE_DIR", cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hiresfix serve starts");
        let base = listening_at(&mut child);
        Server {
            child,
            base,
            _scratch: scratch,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The checkpoint as the server sees it (its file in --models).
    pub(crate) fn model(&self) -> PathBuf {
        self._scratch.path("models/tiny.safetensors")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The address from the server's first stdout line.
fn listening_at(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let start = line
        .find("http://")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    line[start..].split_whitespace().next().unwrap().to_owned()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, body) of a request; 4xx/5xx are answers too.
pub(crate) fn call(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = ureq::request(method, url).timeout(Duration::from_secs(300));
    for (k, v) in headers {
        request = request.set(k, v);
    }
    let result = match body {
        Some(body) => request
            .set("Content-Type", "application/json")
            .send_string(body),
        None => request.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

pub(crate) fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = call("POST", &server.url(path), Some(&body.to_string()), &[]);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) fn get(server: &Server, path: &str) -> Value {
    let (status, text) = call("GET", &server.url(path), None, &[]);
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn fixture(name: &str) -> Value {
    let path = repo().join("tests/data/serve").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A decoded PNG: width, height, RGB bytes and its `parameters` text.
pub(crate) fn decode(b64: &str) -> (u32, u32, Vec<u8>, String) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let chunks =
        hiresfix::output::read_text_chunks_from(std::io::Cursor::new(&bytes), "image").unwrap();
    let parameters = chunks
        .into_iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v)
        .expect("a parameters chunk");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, parameters)
}

pub(crate) fn images(response: &Value) -> Vec<String> {
    response["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {response}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn info(response: &Value) -> Value {
    serde_json::from_str(response["info"].as_str().unwrap()).unwrap()
}

#[test]
fn client_request_bodies_get_hires_pngs() {
    let server = Server::start("serve-clients", &[]);
    for (name, size, hires) in [
        ("webuiapi-txt2img.json", 128, "Hires upscale: 2"),
        ("sillytavern-txt2img.json", 128, "Hires upscale: 2"),
        ("openoutpaint-txt2img.json", 128, "Hires resize: 128x128"),
    ] {
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &fixture(name));
        assert_eq!(status, 200, "{name}: {response}");
        let shown = images(&response);
        assert_eq!(shown.len(), 1, "{name}");
        let (w, h, _, parameters) = decode(&shown[0]);
        assert_eq!((w, h), (size, size), "{name}");
        for field in [
            "Denoising strength: 0.5",
            hires,
            "Hires steps: 2",
            "Hires upscaler: Latent",
            "Seed: 1234",
            "Size: 64x64",
        ] {
            assert!(
                parameters.contains(field),
                "{name}: {field} not in {parameters}"
            );
        }
        let info = info(&response);
        assert_eq!(info["all_seeds"], json!([1234]), "{name}");
        assert_eq!(info["infotexts"][0].as_str().unwrap(), parameters, "{name}");
        assert_eq!(info["sd_model_name"], "tiny");
        assert_eq!(info["denoising_strength"], 0.5);
        assert_eq!(response["parameters"]["prompt"], "a cute cat", "{name}");
    }
    // Every field null or "": the server's defaults (64 px, 3 steps, one pass).
    let mut empty = serde_json::Map::new();
    let webui = fixture("webuiapi-txt2img.json");
    for (i, key) in webui.as_object().unwrap().keys().enumerate() {
        let value = if i % 2 == 0 { Value::Null } else { json!("") };
        empty.insert(key.clone(), value);
    }
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &Value::Object(empty));
    assert_eq!(status, 200, "{response}");
    let (w, h, _, parameters) = decode(&images(&response)[0]);
    assert_eq!((w, h), (64, 64));
    assert!(
        parameters.contains("Steps: 3, Sampler: Euler"),
        "{parameters}"
    );
}

#[test]
fn same_request_is_byte_identical_and_equals_generate() {
    let server = Server::start("serve-same", &[]);
    let body = fixture("webuiapi-txt2img.json");
    let (status, first) = post(&server, "/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{first}");
    let (_, second) = post(&server, "/sdapi/v1/txt2img", &body);
    assert_eq!(
        images(&first),
        images(&second),
        "the same seed gave another image"
    );
    // The profile those fields stand for, through `hiresfix generate`.
    let scratch = Scratch::new("serve-same-cli");
    let profile = format!(
        r#"seed = 1234
prompt = "a cute cat"
negative = "ugly"
cfg = 7
device = "cpu"
[model]
checkpoint = "{}"
[[pass]]
width = 64
height = 64
steps = 4
sampler = "euler"
[[pass]]
scale = 2
upscaler = "latent"
steps = 2
denoise = 0.5
"#,
        server.model().display()
    );
    let out = crate::common::generate_as(&scratch, "cli", &profile);
    assert!(out.status.success(), "{}", crate::common::stderr(&out));
    let file = std::fs::read(scratch.path("cli.png")).unwrap();
    let served = base64::engine::general_purpose::STANDARD
        .decode(&images(&first)[0])
        .unwrap();
    let (_, _, served_rgb, served_text) = decode(&images(&first)[0]);
    let (_, _, file_rgb, file_text) =
        decode(&base64::engine::general_purpose::STANDARD.encode(&file));
    assert_eq!(
        served_rgb, file_rgb,
        "the served image differs from generate's"
    );
    assert_eq!(served_text, file_text);
    assert_eq!(served, file, "same pixels and text, but other PNG bytes");
}

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn interrupt_returns_the_image_as_far_as_it_got_within_a_unet_call() {
    let server = Server::start("serve-interrupt", &[]);
    // Pass 1 of 20 steps and a hires pass.
    let request = |hires: bool| {
        json!({"prompt": "a lighthouse", "seed": 5, "width": 64, "height": 64, "steps": 20,
            "sampler_name": "Euler a", "enable_hr": hires, "hr_scale": 2,
            "hr_second_pass_steps": 2, "denoising_strength": 0.5})
    };
    // The whole of pass 1, for comparison (it also loads the model).
    let (status, full) = post(&server, "/sdapi/v1/txt2img", &request(false));
    assert_eq!(status, 200, "{full}");
    let (_, _, full_rgb, _) = decode(&images(&full)[0]);
    let url = server.url("/sdapi/v1/txt2img");
    let body = request(true).to_string();
    let runner = std::thread::spawn(move || {
        let (status, text) = call("POST", &url, Some(&body), &[]);
        (status, text, Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let step_now = || {
        let p = get(&server, "/sdapi/v1/progress");
        (p["state"]["sampling_step"].as_u64().unwrap(), p)
    };
    // Time step 2 (from the change to 2 to the change to 3: one UNet call of Euler a), then
    // interrupt at once, during step 4 of 20 of pass 1.
    let mut changed_to_2 = None;
    let (step_seconds, during) = loop {
        let (step, p) = step_now();
        assert!(
            Instant::now() < deadline,
            "the job never reached step 3: {p}"
        );
        match step {
            2 if changed_to_2.is_none() => changed_to_2 = Some(Instant::now()),
            s if s >= 3 => {
                let since = changed_to_2.expect("step 2 was seen").elapsed();
                break (since.as_secs_f64(), p);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let asked = Instant::now();
    let (status, _) = call("POST", &server.url("/sdapi/v1/interrupt"), Some("{}"), &[]);
    assert_eq!(status, 200);
    // A1111's current_task while it runs.
    let task = during["current_task"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        task.starts_with("task(txt2img-") && task.ends_with(')'),
        "{during}"
    );
    assert_eq!(during["state"]["job"], "txt2img");
    let (status, text, answered) = runner.join().unwrap();
    let waited = answered.duration_since(asked).as_secs_f64();
    assert_eq!(status, 200, "{text}");
    let response: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info(&response)["interrupted"], true);
    // One image, decoded from pass 1's latest prediction: pass 1's size (the hires pass never
    // ran), not flat, not the finished pass 1, and the infotext of what ran.
    let shown = images(&response);
    assert_eq!(shown.len(), 1, "clients read images[0]");
    let (w, h, rgb, parameters) = decode(&shown[0]);
    assert_eq!((w, h), (64, 64));
    let (lo, hi) = (rgb.iter().min().unwrap(), rgb.iter().max().unwrap());
    assert!(hi - lo > 20, "a flat image: {lo}..{hi}");
    let differing = rgb.iter().zip(&full_rgb).filter(|(a, b)| a != b).count();
    assert!(
        differing > rgb.len() / 4,
        "{differing} of {} values differ",
        rgb.len()
    );
    assert!(parameters.contains("Steps: 20,"), "{parameters}");
    assert!(parameters.contains("Size: 64x64"), "{parameters}");
    assert!(
        !parameters.contains("Hires"),
        "the hires pass did not run: {parameters}"
    );
    assert_eq!(info(&response)["infotexts"][0], parameters);
    // Within the UNet call running when it was asked (plus decoding and answering).
    eprintln!("interrupt answered after {waited:.3} s; one UNet call {step_seconds:.3} s");
    assert!(
        waited < step_seconds + 1.0,
        "answered {waited:.2}s after the interrupt; a UNet call takes {step_seconds:.2}s"
    );
    let idle = get(&server, "/sdapi/v1/progress");
    assert_eq!(idle["state"]["job_count"], 0);
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["current_task"], Value::Null);
    let (status, next) = post(&server, "/sdapi/v1/txt2img", &json!({"seed": 6}));
    assert_eq!(status, 200, "{next}");
    assert_eq!(images(&next).len(), 1);
    assert!(info(&next).get("interrupted").is_none(), "{next}");
}

#[test]
fn load_test_every_request_gets_its_image_or_503() {
    let server = Server::start("serve-load", &["--queue", "8"]);
    let cheap = |seed: u64| json!({"prompt": "a red fox", "seed": seed, "steps": 2});
    let (status, _) = post(&server, "/sdapi/v1/txt2img", &cheap(1));
    assert_eq!(status, 200);
    let baseline = rss_kib(server.pid());
    let url = server.url("/sdapi/v1/txt2img");
    let clients: Vec<_> = (0..20u64)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..3u64)
                    .map(|r| {
                        let seed = 1000 + c * 10 + r;
                        let body = cheap(seed).to_string();
                        let mut req = ureq::post(&url).timeout(Duration::from_secs(600));
                        req = req.set("Content-Type", "application/json");
                        match req.send_string(&body) {
                            Ok(r) => {
                                let v: Value =
                                    serde_json::from_str(&r.into_string().unwrap()).unwrap();
                                (seed, 200, Some(v))
                            }
                            Err(ureq::Error::Status(503, r)) => {
                                assert!(
                                    r.header("Retry-After").is_some(),
                                    "a 503 without Retry-After"
                                );
                                (seed, 503, None)
                            }
                            Err(e) => panic!("request {seed}: {e}"),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u64, u16, Option<Value>)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(results.len(), 60);
    let served: Vec<_> = results.iter().filter(|r| r.1 == 200).collect();
    let busy = results.iter().filter(|r| r.1 == 503).count();
    assert_eq!(served.len() + busy, 60);
    assert!(
        served.len() >= 9,
        "only {} served: the queue of 8 plus the running job",
        served.len()
    );
    assert!(busy > 0, "60 requests at once never filled a queue of 8");
    for (seed, _, response) in &served {
        let response = response.as_ref().unwrap();
        // Its own image: the seed it asked for, once.
        assert_eq!(images(response).len(), 1);
        assert_eq!(info(response)["all_seeds"], json!([seed]));
    }
    let idle = get(&server, "/sdapi/v1/progress");
    assert_eq!(idle["state"]["job_count"], 0);
    let after = rss_kib(server.pid());
    eprintln!(
        "{} served, {busy} busy (503); RSS baseline {baseline} KiB, after the load {after} KiB",
        served.len()
    );
    assert!(
        after < baseline + baseline / 4 + 64 * 1024,
        "RSS grew from {baseline} to {after} KiB"
    );
    let (status, _) = post(&server, "/sdapi/v1/txt2img", &cheap(7));
    assert_eq!(status, 200, "the server is still up");
}

#[test]
fn credentials_body_size_and_field_limits() {
    // Anything but loopback without a token is refused at start.
    let scratch = Scratch::new("serve-open");
    let out = crate::common::hiresfix(
        &scratch.0,
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--model",
            tiny_ldm().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::common::stderr(&out).contains("--token"),
        "{}",
        crate::common::stderr(&out)
    );

    let server = Server::start(
        "serve-auth",
        &["--listen", "0.0.0.0:0", "--token", "s3cret"],
    );
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let local = format!("http://127.0.0.1:{port}/sdapi/v1/samplers");
    assert_eq!(call("GET", &local, None, &[]).0, 401);
    assert_eq!(
        call("GET", &local, None, &[("Authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        call("GET", &local, None, &[("Authorization", "Bearer s3cret")]).0,
        200
    );
    drop(server);

    let server = Server::start("serve-limits", &[]);
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &json!({"steps": 1_000_000}));
    assert_eq!(status, 422, "{response}");
    assert_eq!(response["field"], "steps");
    assert!(
        response["detail"].as_str().unwrap().contains("steps"),
        "{response}"
    );
    let (status, response) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"sampler_name": "Eular"}),
    );
    assert_eq!(status, 422);
    assert_eq!(response["field"], "sampler_name");
    let (status, response) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"enable_hr": true, "hr_scale": 100}),
    );
    assert_eq!(
        (status, response["field"].as_str()),
        (422, Some("hr_scale"))
    );
    // Paths where names belong, a body not declared JSON, a foreign Host: refused.
    let (status, traversal) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "<lora:../../etc/x:1>"}),
    );
    assert_eq!(
        (status, traversal["field"].as_str()),
        (422, Some("prompt")),
        "{traversal}"
    );
    let (status, upscaler) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"enable_hr": true, "hr_upscaler": "/etc/passwd.pth"}),
    );
    assert_eq!(
        (status, upscaler["field"].as_str()),
        (422, Some("hr_upscaler")),
        "{upscaler}"
    );
    let plain = ureq::post(&server.url("/sdapi/v1/txt2img"))
        .set("Content-Type", "text/plain")
        .send_string("{}");
    assert!(
        matches!(plain, Err(ureq::Error::Status(415, _))),
        "text/plain was accepted"
    );
    let rebound = call(
        "GET",
        &server.url("/sdapi/v1/samplers"),
        None,
        &[("Host", "evil.example:7860")],
    );
    assert_eq!(rebound.0, 421);
    // A 10 MB body: 413, read on a raw socket (the server may answer before it is all sent).
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    let size = 10 * 1024 * 1024;
    let head = format!("POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    drop(stream);
    let _ = sender.join();
}

#[test]
fn listings_options_and_png_info() {
    let server = Server::start("serve-listings", &[]);
    let names = |v: Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[key].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = get(&server, "/sdapi/v1/samplers");
    let samplers = names(listed.clone(), "name");
    for s in ["Euler a", "Euler", "DPM++ 2M", "DDIM"] {
        assert!(samplers.contains(&s.to_owned()), "{s} not in {samplers:?}");
    }
    // A1111's sampler options: the schedule each runs by default and DPM2's discarded sigma.
    let options = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["options"]
            .clone()
    };
    assert_eq!(options("DPM++ 2M"), json!({"scheduler": "karras"}));
    assert_eq!(options("DPM++ 2M SDE"), json!({"scheduler": "exponential"}));
    assert_eq!(
        options("DPM2"),
        json!({"scheduler": "karras", "discard_next_to_last_sigma": true})
    );
    assert_eq!(options("Euler"), json!({}));
    let schedulers = names(get(&server, "/sdapi/v1/schedulers"), "name");
    assert_eq!(schedulers[0], "automatic");
    assert!(schedulers.contains(&"karras".to_owned()));
    let upscalers = names(get(&server, "/sdapi/v1/upscalers"), "name");
    assert_eq!(upscalers[0], "None");
    assert!(upscalers.contains(&"Lanczos".to_owned()), "{upscalers:?}");
    let modes = names(get(&server, "/sdapi/v1/latent-upscale-modes"), "name");
    assert!(
        modes.contains(&"Latent".to_owned())
            && modes.contains(&"Latent (bicubic antialiased)".to_owned()),
        "{modes:?}"
    );
    let models = get(&server, "/sdapi/v1/sd-models");
    assert_eq!(models[0]["model_name"], "tiny");
    assert!(models[0]["title"]
        .as_str()
        .unwrap()
        .starts_with("tiny.safetensors"));

    // Options: an unknown model is refused naming the field; a known one is the default.
    let (status, response) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "nope"}),
    );
    assert_eq!(
        (status, response["field"].as_str()),
        (422, Some("sd_model_checkpoint"))
    );
    let title = models[0]["title"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": title, "CLIP_stop_at_last_layers": 2}),
    );
    assert_eq!(status, 200);
    let options = get(&server, "/sdapi/v1/options");
    assert_eq!(options["CLIP_stop_at_last_layers"], 2);
    assert!(options["sd_model_checkpoint"]
        .as_str()
        .unwrap()
        .starts_with("tiny.safetensors"));

    // PNG info of an image it made: the parameters, parsed.
    let (status, response) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a boat", "seed": 77, "steps": 2}),
    );
    assert_eq!(status, 200, "{response}");
    let image = format!("data:image/png;base64,{}", images(&response)[0]);
    let (status, png) = post(&server, "/sdapi/v1/png-info", &json!({"image": image}));
    assert_eq!(status, 200, "{png}");
    assert!(png["info"].as_str().unwrap().starts_with("a boat\n"));
    assert_eq!(png["parameters"]["Seed"], "77");
    assert_eq!(png["parameters"]["Clip skip"], "2");
    assert_eq!(png["parameters"]["Size-1"], "64");
    assert!(png["items"]["hiresfix-profile"].is_string());
    assert_eq!(
        call("GET", &server.url("/sdapi/v1/nothing"), None, &[]).0,
        404
    );
}

/// The server-sent events of a response: (event, data) pairs.
pub(crate) fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

#[test]
fn native_generate_streams_a_three_pass_profile() {
    let server = Server::start("serve-native", &[]);
    let profile = r#"
seed = 11
prompt = "a castle"
[[pass]]
width = 32
height = 32
steps = 3
[[pass]]
scale = 1.5
steps = 2
denoise = 0.5
[[pass]]
scale = 1.5
steps = 2
denoise = 0.4
upscaler = "pixel-lanczos"
"#;
    let response = ureq::post(&server.url("/hiresfix/v1/generate"))
        .set("Content-Type", "application/toml")
        .send_string(profile)
        .unwrap();
    assert_eq!(response.header("Content-Type"), Some("text/event-stream"));
    let text = response.into_string().unwrap();
    let events = events(&text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    assert!(kinds.contains(&"started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    let image = events
        .iter()
        .find(|(k, _)| k == "image")
        .expect("an image event");
    let (w, h, _, parameters) = decode(image.1["png"].as_str().unwrap());
    assert_eq!((w, h), (72, 72));
    assert!(
        parameters.contains("Hires 2 denoising strength: 0.4"),
        "{parameters}"
    );
    // What only the server may set is refused, naming the key.
    let (status, text) = call(
        "POST",
        &server.url("/hiresfix/v1/generate"),
        Some(r#"{"plugin_dirs": ["/tmp"]}"#),
        &[],
    );
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("plugin_dirs"));
    let (status, text) = call(
        "POST",
        &server.url("/hiresfix/v1/generate"),
        Some(r#"{"model": {"checkpoint": "/etc/passwd"}}"#),
        &[],
    );
    assert_eq!(status, 422, "{text}");
    let plugins = get(&server, "/hiresfix/v1/plugins");
    assert!(plugins["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "euler"));
}

#[test]
fn sigterm_answers_the_running_request_and_exits() {
    let mut server = Server::start("serve-term", &["--max-steps", "400"]);
    let url = server.url("/sdapi/v1/txt2img");
    let runner =
        std::thread::spawn(move || call("POST", &url, Some(r#"{"steps": 400, "seed": 3}"#), &[]));
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(&server, "/sdapi/v1/progress")["state"]["sampling_step"]
        .as_u64()
        .unwrap()
        < 1
    {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    let (status, text) = runner.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

#[test]
fn loras_do_not_leak_between_requests_and_hires_switches_work() {
    let loras = repo().join("tests/data/loras");
    let upscalers = repo().join("tests/data/upscalers/models");
    let server = Server::start(
        "serve-loras",
        &[
            "--loras",
            loras.to_str().unwrap(),
            "--upscalers",
            upscalers.to_str().unwrap(),
        ],
    );
    // The same model as a diffusers folder, for a hires checkpoint switch.
    let models = server._scratch.path("models");
    std::os::unix::fs::symlink(
        crate::common::tiny_diffusers(),
        models.join("tiny-diffusers"),
    )
    .unwrap();
    let (status, _) = post(&server, "/sdapi/v1/refresh-checkpoints", &json!({}));
    assert_eq!(status, 200);
    let listed = get(&server, "/sdapi/v1/loras");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "sd1-kohya"),
        "{listed}"
    );

    let plain = json!({"prompt": "a cat", "seed": 21, "steps": 2});
    let with_lora = json!({"prompt": "a cat <lora:sd1-kohya:0.8>", "seed": 21, "steps": 2});
    let (_, before) = post(&server, "/sdapi/v1/txt2img", &plain);
    let (status, lora) = post(&server, "/sdapi/v1/txt2img", &with_lora);
    assert_eq!(status, 200, "{lora}");
    let (_, after) = post(&server, "/sdapi/v1/txt2img", &plain);
    assert_ne!(images(&before), images(&lora), "the LoRA changed nothing");
    assert!(decode(&images(&lora)[0])
        .3
        .contains("Lora hashes: \"sd1-kohya: "));
    assert_eq!(
        images(&before),
        images(&after),
        "the LoRA stayed applied after its request"
    );
    let (status, missing) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "<lora:nope:1>", "steps": 2}),
    );
    assert_eq!(status, 422, "{missing}");
    assert!(
        missing["detail"].as_str().unwrap().contains("nope"),
        "{missing}"
    );

    // hr_checkpoint_name, hr_sampler_name + hr_scheduler, a model upscaler, hr_cfg.
    let hires = json!({
        "prompt": "a cat", "seed": 4, "steps": 2, "enable_hr": true, "hr_scale": 1.5,
        "hr_second_pass_steps": 2, "denoising_strength": 0.6,
        "hr_checkpoint_name": "tiny-diffusers", "hr_sampler_name": "DPM++ 2M",
        "hr_scheduler": "Karras", "hr_upscaler": "realesrgan-x4", "hr_cfg": 4.5
    });
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &hires);
    assert_eq!(status, 200, "{response}");
    let (w, _, _, parameters) = decode(&images(&response)[0]);
    assert_eq!(w, 96);
    for field in [
        "Hires checkpoint: tiny-diffusers",
        "Hires sampler: DPM++ 2M",
        "Hires schedule type: Karras",
        "Hires upscaler: realesrgan-x4",
        "Hires CFG Scale: 4.5",
    ] {
        assert!(parameters.contains(field), "{field} not in {parameters}");
    }
}

/// The request of A1111's own `test/test_txt2img.py` (`simple_txt2img_request`, transcribed)
/// with `enable_hr` on, as `test_txt2img_with_hrfix_performed` sends it: a hires pass of
/// `denoising_strength` 0, which A1111 answers with the upscaled first pass.
#[test]
fn a1111_test_hires_request_of_zero_denoise_answers_200() {
    let server = Server::start("serve-a1111-hrfix", &[]);
    let body = json!({
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": true, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1,
        "negative_prompt": "", "prompt": "example prompt", "restore_faces": false,
        "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
        "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": false, "width": 64
    });
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{response}");
    let (w, h, _, parameters) = decode(&images(&response)[0]);
    assert_eq!((w, h), (128, 128), "hr_scale defaults to 2");
    assert!(parameters.contains("Denoising strength: 0"), "{parameters}");
    // `test_txt2img_with_restore_faces_performed`: 200, and the field is named as ignored.
    let mut faces = body.clone();
    faces["restore_faces"] = json!(true);
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &faces);
    assert_eq!(status, 200, "{response}");
    let warnings = info(&response)["warnings"].clone();
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{warnings}");
    assert!(warnings[0]
        .as_str()
        .unwrap()
        .starts_with("restore_faces = true was ignored"));
    // A script hiresfix does not have: 422, as A1111 answers.
    let mut script = body.clone();
    script["script_name"] = json!("x/y/z plot");
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &script);
    assert_eq!(
        (status, response["field"].as_str()),
        (422, Some("script_name")),
        "{response}"
    );
}

/// Every other test of A1111's own `test/test_txt2img.py` (stable-diffusion-webui, its
/// `simple_txt2img_request` transcribed above, each test's one change applied): 200 and
/// images of the asked size and number.
#[test]
fn a1111_txt2img_test_requests_answer_200_with_images_of_the_asked_size() {
    let server = Server::start("serve-a1111-txt2img", &[]);
    let simple = json!({
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": false, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1,
        "negative_prompt": "", "prompt": "example prompt", "restore_faces": false,
        "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
        "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": false, "width": 64
    });
    let complex = "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]";
    let cases: Vec<(&str, Value, (u32, u32), usize)> = vec![
        ("test_txt2img_simple_performed", json!({}), (64, 64), 1),
        (
            "test_txt2img_with_negative_prompt_performed",
            json!({"negative_prompt": "example negative prompt"}),
            (64, 64),
            1,
        ),
        (
            "test_txt2img_with_complex_prompt_performed",
            json!({ "prompt": complex }),
            (64, 64),
            1,
        ),
        (
            "test_txt2img_not_square_image_performed",
            json!({"height": 128}),
            (64, 128),
            1,
        ),
        (
            "test_txt2img_with_tiling_performed",
            json!({"tiling": true}),
            (64, 64),
            1,
        ),
        (
            "vanilla sampler PLMS",
            json!({"sampler_index": "PLMS"}),
            (64, 64),
            1,
        ),
        (
            "vanilla sampler DDIM",
            json!({"sampler_index": "DDIM"}),
            (64, 64),
            1,
        ),
        (
            "vanilla sampler UniPC",
            json!({"sampler_index": "UniPC"}),
            (64, 64),
            1,
        ),
        (
            "test_txt2img_multiple_batches_performed",
            json!({"n_iter": 2}),
            (64, 64),
            2,
        ),
        (
            "test_txt2img_batch_performed",
            json!({"batch_size": 2}),
            (64, 64),
            2,
        ),
    ];
    for (name, change, size, count) in cases {
        let mut body = simple.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
        assert_eq!(status, 200, "{name}: {response}");
        let list = images(&response);
        assert_eq!(list.len(), count, "{name}");
        for image in list {
            let (w, h, pixels, _) = decode(&image);
            assert_eq!((w, h), size, "{name}");
            // A sane image: not one flat colour.
            let first = &pixels[..3];
            assert!(pixels.chunks(3).any(|p| p != first), "{name}: a flat image");
        }
    }
}

/// A1111's listing and housekeeping endpoints that clients probe (webuiapi, A1111's
/// `test/test_utils.py`): each answers in A1111's shape.
#[test]
fn a1111_listing_endpoints_answer_in_its_shapes() {
    let server = Server::start("serve-listings", &[]);
    assert_eq!(get(&server, "/internal/ping"), json!({}));
    let flags = get(&server, "/sdapi/v1/cmd-flags");
    assert_eq!(
        (flags["api"].clone(), flags["listen"].clone()),
        (json!(true), json!(false))
    );
    let memory = get(&server, "/sdapi/v1/memory");
    let total = memory["ram"]["total"].as_u64().unwrap();
    assert!(total > 1 << 30, "{memory}");
    assert_eq!(
        memory["ram"]["used"].as_u64().unwrap() + memory["ram"]["free"].as_u64().unwrap(),
        total
    );
    assert!(memory["cuda"]["error"].is_string(), "{memory}");
    for empty in ["hypernetworks", "face-restorers", "prompt-styles"] {
        assert_eq!(
            get(&server, &format!("/sdapi/v1/{empty}")),
            json!([]),
            "{empty}"
        );
    }
    assert!(get(&server, "/sdapi/v1/realesrgan-models").is_array());
    assert!(get(&server, "/sdapi/v1/sd-modules").is_array());
    for refresh in ["refresh-vae", "refresh-embeddings"] {
        let (status, body) = post(&server, &format!("/sdapi/v1/{refresh}"), &json!({}));
        assert_eq!((status, body), (200, Value::Null), "{refresh}");
    }
}

/// A1111's `refiner_checkpoint` / `refiner_switch_at` reach the run and its infotext: pass 1
/// without hires fix; with it, the pass `hires_fix_refiner_pass` says (A1111's default "second
/// pass": no `Hires refiner` field). An unknown refiner is a 422 naming the field.
#[test]
fn txt2img_refiner_fields_reach_the_infotext() {
    let data = repo().join("tests/data");
    let server = Server::with_models(
        "serve-refiner",
        &[
            (
                "sdxl-tiny.safetensors",
                data.join("sdxl-tiny/sdxl-tiny.safetensors"),
            ),
            (
                "sdxl-refiner-tiny.safetensors",
                data.join("sdxl-refiner-tiny/sdxl-refiner-tiny.safetensors"),
            ),
        ],
    );
    let hash = hiresfix::parameters::model_hash(
        &data.join("sdxl-refiner-tiny/sdxl-refiner-tiny.safetensors"),
    )
    .unwrap();
    let body = json!({
        "prompt": "a lighthouse", "seed": 3, "steps": 3, "width": 64, "height": 64,
        "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "sdxl-tiny"},
        "refiner_checkpoint": "sdxl-refiner-tiny", "refiner_switch_at": 0.6
    });
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{response}");
    let (_, _, _, parameters) = decode(&images(&response)[0]);
    let refiner = format!("Refiner: sdxl-refiner-tiny [{hash}], Refiner switch at: 0.6");
    assert!(
        parameters.contains(&refiner),
        "{refiner} not in {parameters}"
    );
    assert!(parameters.contains("Model: sdxl-tiny"), "{parameters}");

    let mut hires = body.clone();
    hires["enable_hr"] = json!(true);
    hires["hr_scale"] = json!(1.5);
    hires["hr_second_pass_steps"] = json!(2);
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &hires);
    assert_eq!(status, 200, "{response}");
    let (w, _, _, parameters) = decode(&images(&response)[0]);
    assert_eq!(w, 96);
    assert!(parameters.contains(&refiner), "{parameters}");
    assert!(!parameters.contains("Hires refiner"), "{parameters}");
    hires["override_settings"]["hires_fix_refiner_pass"] = json!("both passes");
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &hires);
    assert_eq!(status, 200, "{response}");
    let (_, _, _, parameters) = decode(&images(&response)[0]);
    assert!(
        parameters.contains("Hires refiner: both passes"),
        "{parameters}"
    );

    let mut unknown = body.clone();
    unknown["refiner_checkpoint"] = json!("nope");
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &unknown);
    assert_eq!(status, 422, "{response}");
    assert!(
        response.to_string().contains("refiner_checkpoint"),
        "{response}"
    );
}
