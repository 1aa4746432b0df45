//! Live previews: `/sdapi/v1/progress` fills `current_image` while a job samples when the
//! options `live_previews_enable` and `show_progress_every_n_steps` say so (A1111's "Approx
//! cheap" latent → RGB, one pixel per latent cell); off, it stays null.
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::serve::{call, get, post, Server};

/// Polls `/progress` while a long job runs; the first `current_image` seen (or None when the
/// job ends without one), then interrupts the job.
fn first_preview(server: &Server) -> Option<String> {
    let long =
        json!({"prompt": "a lighthouse", "seed": 5, "width": 64, "height": 64, "steps": 400});
    let url = server.url("/sdapi/v1/txt2img");
    let runner = std::thread::spawn(move || call("POST", &url, Some(&long.to_string()), &[]));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = None;
    let mut sampled = 0;
    while Instant::now() < deadline {
        let p = get(server, "/sdapi/v1/progress");
        let step = p["state"]["sampling_step"].as_u64().unwrap_or(0);
        if let Some(image) = p["current_image"].as_str() {
            seen = Some(image.to_owned());
            break;
        }
        // Previews off: enough steps sampled without one.
        if step >= 12 {
            sampled = step;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    call("POST", &server.url("/sdapi/v1/interrupt"), Some("{}"), &[]);
    let (status, text) = runner.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(seen.is_some() || sampled >= 12, "the job never sampled");
    seen
}

#[test]
fn progress_carries_a_decodable_preview_png_while_sampling() {
    let server = Server::start("serve-previews", &["--max-steps", "400"]);
    let options = get(&server, "/sdapi/v1/options");
    assert_eq!(options["live_previews_enable"], true);
    assert_eq!(options["show_progress_every_n_steps"], 10);
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"live_previews_enable": true, "show_progress_every_n_steps": 1}),
    );
    assert_eq!(status, 200);
    let image = first_preview(&server).expect("a current_image while sampling");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image)
        .unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    // One preview pixel per latent cell: the tiny model's VAE has two levels (2 px a cell),
    // so 64 × 64 px is 32 × 32 cells (8 × 8 on a real SD model).
    assert_eq!((info.width, info.height), (32, 32));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    assert!(buf.iter().any(|&v| v != buf[0]), "a flat preview");
    // Idle: no preview.
    assert_eq!(
        get(&server, "/sdapi/v1/progress")["current_image"],
        Value::Null
    );

    // Off: none while sampling.
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"live_previews_enable": false}),
    );
    assert_eq!(status, 200);
    assert_eq!(first_preview(&server), None);
    let (status, body) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"show_progress_every_n_steps": "often"}),
    );
    assert_eq!(status, 422, "{body}");
}

#[test]
fn the_native_stream_sends_preview_events() {
    let server = Server::start("serve-native-previews", &[]);
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"show_progress_every_n_steps": 1}),
    );
    assert_eq!(status, 200);
    // Enough steps that the stream (polled every 200 ms) sees the job sampling.
    let profile =
        "seed = 3\nprompt = \"a castle\"\n[[pass]]\nwidth = 32\nheight = 32\nsteps = 150\n";
    let response = ureq::post(&server.url("/hiresfix/v1/generate"))
        .set("Content-Type", "application/toml")
        .send_string(profile)
        .unwrap();
    let text = response.into_string().unwrap();
    let events = crate::serve::events(&text);
    let preview = events
        .iter()
        .find(|(k, _)| k == "preview")
        .unwrap_or_else(|| {
            let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
            panic!("no preview event in {kinds:?}")
        });
    assert_eq!(preview.1["pass"], 1);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(preview.1["png"].as_str().unwrap())
        .unwrap();
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    // 32 px on the tiny model (2 px a latent cell): 16 × 16.
    assert_eq!((reader.info().width, reader.info().height), (16, 16));
    assert_eq!(events.last().map(|(k, _)| k.as_str()), Some("done"));
}
