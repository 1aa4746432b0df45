//! Live previews: `/sdapi/v1/progress` fills `current_image` while a job samples when the
//! options `live_previews_enable` and `show_progress_every_n_steps` say so (ComfyUI's
//! latent-to-RGB factors, one pixel per latent cell; a TAESD decoder in `<models>/VAE-approx`
//! unless `show_progress_type` is "Approx cheap"); off, it stays null.
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{repo, tiny_ldm};
use crate::serve::{call, get, post, Server};

/// What polling `/progress` saw during one 20-step 64 px job, run to its end.
struct Watched {
    /// Every distinct `current_image` seen while the job sampled.
    images: Vec<String>,
    /// Polls that saw the job between its first and last step.
    mid_run: usize,
}

fn watch_20_steps(server: &Server) -> Watched {
    let job = json!({"prompt": "a lighthouse", "seed": 5, "width": 64, "height": 64, "steps": 20});
    let url = server.url("/sdapi/v1/txt2img");
    let runner = std::thread::spawn(move || call("POST", &url, Some(&job.to_string()), &[]));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut watched = Watched {
        images: Vec::new(),
        mid_run: 0,
    };
    while !runner.is_finished() {
        assert!(Instant::now() < deadline, "the job did not end");
        let p = get(server, "/sdapi/v1/progress");
        let step = p["state"]["sampling_step"].as_u64().unwrap_or(0);
        if (1..20).contains(&step) {
            watched.mid_run += 1;
        }
        if let Some(image) = p["current_image"].as_str() {
            if watched.images.last().map(String::as_str) != Some(image) {
                watched.images.push(image.to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (status, text) = runner.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(watched.mid_run > 0, "no poll saw the job sampling");
    watched
}

/// A base64 PNG's size and RGB bytes.
fn png_rgb(image: &str) -> (u32, u32, Vec<u8>) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image)
        .unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn set(server: &Server, options: Value) {
    let (status, body) = post(server, "/sdapi/v1/options", &options);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn progress_carries_a_decodable_preview_png_during_a_20_step_job() {
    let server = Server::start("serve-previews", &[]);
    let options = get(&server, "/sdapi/v1/options");
    assert_eq!(options["live_previews_enable"], true);
    assert_eq!(options["show_progress_every_n_steps"], 10);
    // Loads the model, so that the watched jobs sample from their first poll.
    let (status, body) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"seed": 1, "steps": 1}),
    );
    assert_eq!(status, 200, "{body}");

    set(
        &server,
        json!({"live_previews_enable": true, "show_progress_every_n_steps": 1}),
    );
    let on = watch_20_steps(&server);
    let image = on.images.first().expect("a current_image while sampling");
    let (w, h, rgb) = png_rgb(image);
    // One preview pixel per latent cell: the tiny model's VAE has two levels (2 px a cell),
    // so 64 × 64 px is 32 × 32 cells (64 × 64 on a real SD model at 512 px).
    assert_eq!((w, h), (32, 32));
    assert!(rgb.iter().any(|&v| v != rgb[0]), "a flat preview");
    // Idle: no preview.
    assert_eq!(
        get(&server, "/sdapi/v1/progress")["current_image"],
        Value::Null
    );

    // Off: none while sampling.
    set(&server, json!({"live_previews_enable": false}));
    let off = watch_20_steps(&server);
    assert!(off.images.is_empty(), "{} previews", off.images.len());

    for bad in [
        json!({"show_progress_every_n_steps": "often"}),
        json!({"show_progress_type": "Sharp"}),
    ] {
        let (status, body) = post(&server, "/sdapi/v1/options", &bad);
        assert_eq!(status, 422, "{body}");
    }
}

#[test]
fn a_taesd_decoder_in_models_vae_approx_makes_full_size_previews() {
    // The random tiny TAESD decoder of scripts/make_taesd_reference.py as
    // <models>/VAE-approx/taesd_decoder.safetensors.
    let server = Server::with_models(
        "serve-previews-taesd",
        &[
            ("tiny.safetensors", tiny_ldm()),
            ("VAE-approx", repo().join("tests/data/live_preview")),
        ],
    );
    let (status, body) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"seed": 1, "steps": 1}),
    );
    assert_eq!(status, 200, "{body}");
    set(&server, json!({"show_progress_every_n_steps": 1}));
    let taesd = watch_20_steps(&server);
    // TAESD decodes 8 px a latent cell: 32 × 32 cells → 256 × 256.
    let (w, h, _) = png_rgb(taesd.images.first().expect("a TAESD preview"));
    assert_eq!((w, h), (256, 256));
    // "Approx cheap": the latent-to-RGB factors again.
    set(&server, json!({"show_progress_type": "Approx cheap"}));
    let cheap = watch_20_steps(&server);
    let (w, h, _) = png_rgb(cheap.images.first().expect("a cheap preview"));
    assert_eq!((w, h), (32, 32));
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
