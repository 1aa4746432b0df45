//! `/sdapi/v1/embeddings` and `/refresh-embeddings` as A1111 answers them: the files of
//! `--embeddings` as the current model reads them, loaded or skipped; generation requests
//! read prompts with them and write `TI hashes`.
use serde_json::{json, Value};

use crate::common::*;
use crate::serve::{get, info, post, Server};

#[test]
fn embeddings_are_listed_loaded_or_skipped_and_reach_the_infotext() {
    let scratch = Scratch::new("serve-embeddings-files");
    let data = repo().join("tests/data/embeddings");
    for (from, to) in [
        ("sd1/tinyneg.safetensors", "tinyneg.safetensors"),
        ("sd1/tinystyle.pt", "tinystyle.pt"),
        ("sdxl/tinyxl.safetensors", "tinyxl.safetensors"),
    ] {
        std::fs::copy(data.join(from), scratch.path(to)).unwrap();
    }
    let server = Server::start(
        "serve-embeddings",
        &["--embeddings", scratch.0.to_str().unwrap()],
    );
    let listed = get(&server, "/sdapi/v1/embeddings");
    let entry = |vectors: u32, shape: u32| {
        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
               "shape": shape, "vectors": vectors})
    };
    assert_eq!(listed["loaded"], json!({"tinyneg": entry(3, 32)}));
    // SDXL's on an SD 1.x model, and a pickle to convert first.
    assert_eq!(listed["skipped"]["tinyxl"], entry(2, 32));
    assert_eq!(
        listed["skipped"]["tinystyle"],
        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
               "shape": null, "vectors": null})
    );

    // A file added later shows after a refresh (folders are read on every request).
    std::fs::copy(
        data.join("sd1/tinylong.safetensors"),
        scratch.path("tinylong.safetensors"),
    )
    .unwrap();
    let (status, body) = post(&server, "/sdapi/v1/refresh-embeddings", &json!({}));
    assert_eq!((status, body), (200, Value::Null));
    let listed = get(&server, "/sdapi/v1/embeddings");
    assert_eq!(listed["loaded"]["tinylong"], entry(9, 32));
    // The .pt converted beside itself: loaded, with the training notes A1111 lists.
    let pt = scratch.path("tinystyle.pt");
    let run = hiresfix(&scratch.0, &["convert", pt.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let listed = get(&server, "/sdapi/v1/embeddings");
    assert_eq!(
        listed["loaded"]["tinystyle"],
        json!({"step": 150, "sd_checkpoint": "7a1b2c3d", "sd_checkpoint_name": "sd1-tiny",
               "shape": 32, "vectors": 2})
    );

    let request = json!({"prompt": "a (tinyneg:1.2) cat", "seed": 3, "width": 64,
                         "height": 64, "steps": 2});
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &request);
    assert_eq!(status, 200, "{response}");
    let hash = sha256_12(&std::fs::read(scratch.path("tinyneg.safetensors")).unwrap());
    let infotext = info(&response)["infotexts"][0].as_str().unwrap().to_owned();
    assert!(
        infotext.contains(&format!("TI hashes: \"tinyneg: {hash}\"")),
        "{infotext}"
    );
}
