//! T5 encoder and tokenizer against transformers on a tiny random T5 v1.1
//! (tests/data/t5-tiny, made by scripts/make_t5_reference.py).
use hiresfix_flow::t5::{
    locate_tokenizer, T5Encoder, T5Tokenizer, T5Tokens, T5Weights, SINGLE_FILE_PREFIX,
    TOKENIZER_KEY,
};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/t5-tiny")
}

struct Case {
    name: String,
    prompt: String,
    max_length: usize,
    parsed: Vec<(String, f64)>,
    ids: Vec<i64>,
    weights: Vec<f64>,
}

fn read_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(data().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    numbers(v).into_iter().map(|x| x as i64).collect()
}

/// A1111 `parse_prompt_attention` output as the reference script wrote it.
fn fragments(v: &serde_json::Value) -> Vec<(String, f64)> {
    let pair = |p: &serde_json::Value| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap());
    v.as_array().unwrap().iter().map(pair).collect()
}

fn cases() -> Vec<Case> {
    let json = read_json("reference.json");
    assert_eq!(json["single_file_prefix"], SINGLE_FILE_PREFIX);
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompt: c["prompt"].as_str().unwrap().to_string(),
            max_length: c["max_length"].as_u64().unwrap() as usize,
            parsed: fragments(&c["parsed"]),
            ids: ids(&c["ids"]),
            weights: numbers(&c["weights"]),
        })
        .collect()
}

fn tokenizer() -> T5Tokenizer {
    T5Tokenizer::from_file(&data().join("tokenizer_3/tokenizer.json")).unwrap()
}

/// max |a - b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

fn reference_hidden() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(data().join("hidden.safetensors")).unwrap()
}

/// The tiny encoder from its diffusers folder.
fn encoder(kind: Kind) -> T5Encoder {
    let weights = T5Weights::from_path(&data().join("text_encoder_3")).unwrap();
    T5Encoder::new(weights, Device::Cpu, kind).unwrap()
}

fn tokens(tok: &T5Tokenizer, case: &Case) -> T5Tokens {
    tok.tokens(&case.parsed, case.max_length).unwrap()
}

#[test]
fn t5_token_ids_and_weights_match_transformers_and_a1111_layout() {
    let tok = tokenizer();
    assert_eq!((tok.eos(), tok.pad()), (1, 0));
    for case in cases() {
        let got = tokens(&tok, &case);
        assert_eq!(got.ids, case.ids, "{}: ids", case.name);
        let weights: Vec<f64> = got.weights.iter().map(|&w| f64::from(w)).collect();
        assert_eq!(weights.len(), case.weights.len(), "{}", case.name);
        for (i, (a, b)) in weights.iter().zip(&case.weights).enumerate() {
            assert!(
                (a - b).abs() < 1e-6,
                "{}: weight {i}: {a} vs {b}",
                case.name
            );
        }
        if case.parsed.len() == 1 {
            // Without emphasis syntax the prompt is tokenized whole, as diffusers does.
            assert_eq!(
                tok.plain(&case.prompt, case.max_length).unwrap().ids,
                case.ids
            );
        }
    }
}

/// Some tokenizer.json files carry a truncation or padding setting; transformers' callers
/// override it, and so does this tokenizer.
#[test]
fn t5_tokenizer_ignores_truncation_and_padding_in_the_file() {
    let path = data().join("tokenizer_3/tokenizer.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["truncation"] = serde_json::json!(
        {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
    spec["padding"] = serde_json::json!({"strategy": {"Fixed": 8}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tokenizer.json");
    std::fs::write(&copy, spec.to_string()).unwrap();
    let case = cases().into_iter().find(|c| c.name == "plain").unwrap();
    let got = T5Tokenizer::from_file(&copy)
        .unwrap()
        .plain(&case.prompt, case.max_length);
    assert_eq!(got.unwrap().ids, case.ids);
}

#[test]
fn t5_long_prompt_is_cut_to_max_length_keeping_eos() {
    let case = cases().into_iter().find(|c| c.name == "long").unwrap();
    let got = tokens(&tokenizer(), &case);
    assert_eq!(got.ids.len(), 256);
    assert_eq!(got.ids[255], 1);
    assert!(got.ids[..255].iter().all(|&id| id != 0 && id != 1));
}

#[test]
fn t5_hidden_states_match_transformers_with_forge_emphasis() {
    let encoder = encoder(Kind::Float);
    let config = encoder.config();
    assert_eq!(
        (
            config.d_model,
            config.d_kv,
            config.num_heads,
            config.d_ff,
            config.num_layers
        ),
        (32, 8, 4, 64, 2)
    );
    let tok = tokenizer();
    let reference = reference_hidden();
    for case in cases() {
        let want = &reference.iter().find(|(k, _)| *k == case.name).unwrap().1;
        let got = encoder
            .encode(&[tokens(&tok, &case)])
            .unwrap()
            .squeeze_dim(0);
        let err = relative_error(&got, want);
        eprintln!("t5 {:<12} relative error {err:.3e}", case.name);
        assert!(err <= TOLERANCE, "{}: relative error {err:e}", case.name);
    }
}

/// fp16 and bf16 follow transformers' half-precision path (norm casts, gelu_new op by op, fp16
/// clamp): well inside the distance of its half-precision output from fp32 (fp16 1.2e-3, bf16
/// 8.5e-3 apart); identical on the machine the references were made on.
#[test]
fn t5_half_precision_matches_transformers_half_precision() {
    let case = cases().into_iter().find(|c| c.name == "plain").unwrap();
    let input = [tokens(&tokenizer(), &case)];
    let reference = reference_hidden();
    for (kind, key, tolerance) in [
        (Kind::Half, "plain@float16", 4e-4),
        (Kind::BFloat16, "plain@bfloat16", 3e-3),
    ] {
        let got = encoder(kind).encode(&input).unwrap().squeeze_dim(0);
        assert_eq!(got.kind(), kind);
        let want = &reference.iter().find(|(k, _)| k == key).unwrap().1;
        let err = relative_error(&got, want);
        eprintln!("t5 {key:<16} relative error {err:.3e}");
        assert!(err <= tolerance, "{key}: relative error {err:e}");
    }
}

/// ComfyUI's t5xxl_fp8_e4m3fn files: fp8 weights, read exactly (6e-2 away from fp32 here).
#[test]
fn t5_fp8_file_matches_transformers_on_its_weights() {
    let weights = T5Weights::from_path(&data().join("t5xxl_fp8_e4m3fn.safetensors")).unwrap();
    let encoder = T5Encoder::new(weights, Device::Cpu, Kind::Float).unwrap();
    let case = cases().into_iter().find(|c| c.name == "plain").unwrap();
    let got = encoder
        .encode(&[tokens(&tokenizer(), &case)])
        .unwrap()
        .squeeze_dim(0);
    let reference = reference_hidden();
    let want = &reference
        .iter()
        .find(|(k, _)| k == "plain@fp8_e4m3fn")
        .unwrap()
        .1;
    let err = relative_error(&got, want);
    eprintln!("t5 plain@fp8_e4m3fn relative error {err:.3e}");
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn t5_emphasis_changes_the_weighted_tokens_and_keeps_the_mean() {
    let encoder = encoder(Kind::Float);
    let case = cases().into_iter().find(|c| c.name == "emphasis").unwrap();
    let emphasised = tokens(&tokenizer(), &case);
    let plain = T5Tokens {
        weights: vec![1.0; emphasised.ids.len()],
        ..emphasised.clone()
    };
    let a = encoder.encode(&[emphasised]).unwrap();
    let b = encoder.encode(&[plain]).unwrap();
    assert!(relative_error(&a, &b) > 1e-2);
    let mean = |t: &Tensor| f64::try_from(t.mean(Kind::Double)).unwrap();
    assert!((mean(&a) - mean(&b)).abs() <= 1e-6 * mean(&b).abs().max(1e-6));
}

/// Prompt and negative prompt in one call: each row as when encoded alone (emphasis keeps each
/// prompt's own mean, not the batch's).
#[test]
fn t5_rows_of_a_batch_are_encoded_independently() {
    let encoder = encoder(Kind::Float);
    let tok = tokenizer();
    let all = cases();
    let pick = |name: &str| tokens(&tok, all.iter().find(|c| c.name == name).unwrap());
    let (emphasis, empty) = (pick("emphasis"), pick("empty"));
    let both = encoder.encode(&[emphasis.clone(), empty.clone()]).unwrap();
    for (row, alone) in [(0, emphasis), (1, empty)] {
        let alone = encoder.encode(&[alone]).unwrap().squeeze_dim(0);
        assert!(relative_error(&both.get(row), &alone) <= 1e-6, "row {row}");
    }
}

#[test]
fn t5_split_and_single_file_layouts_load_the_same_encoder() {
    let tok = tokenizer();
    let case = cases().into_iter().find(|c| c.name == "plain").unwrap();
    let input = [tokens(&tok, &case)];
    let folder = T5Weights::from_path(&data().join("text_encoder_3")).unwrap();
    let split = T5Weights::from_path(&data().join("text_encoder_3/model.safetensors")).unwrap();
    let single = T5Weights::from_path(&data().join("single_file.safetensors")).unwrap();
    let want = T5Encoder::new(folder, Device::Cpu, Kind::Float)
        .unwrap()
        .encode(&input)
        .unwrap();
    for weights in [split, single] {
        let source = weights.source().to_string();
        let got = T5Encoder::new(weights, Device::Cpu, Kind::Float)
            .unwrap()
            .encode(&input)
            .unwrap();
        assert!(got.equal(&want), "{source}");
    }
}

#[test]
fn a_spiece_model_reads_as_transformers_converts_it() {
    let folder = data().join("spiece_only");
    let found = locate_tokenizer(Path::new("model.safetensors"), Some(&folder)).unwrap();
    assert!(
        found.ends_with("spiece_only/spiece.model"),
        "{}",
        found.display()
    );
    let tok = T5Tokenizer::from_file(&found).unwrap();
    assert_eq!((tok.eos(), tok.pad()), (1, 0));
    for case in read_json("reference.json")["spiece_cases"]
        .as_array()
        .unwrap()
    {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.plain(prompt, want.len()).unwrap().ids;
        assert_eq!(got, want, "{prompt:?}");
    }
}

#[test]
fn a_single_file_without_tokenizer_names_the_key_to_add() {
    let single = data().join("single_file.safetensors");
    let err = locate_tokenizer(&single, None).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    assert!(err.contains("single_file.safetensors"), "{err}");
    assert!(
        err.contains(&format!("[model] {TOKENIZER_KEY} = ")),
        "{err}"
    );
    // A configured path that does not exist is named as well.
    let missing = data().join("nowhere/tokenizer.json");
    let err = locate_tokenizer(&single, Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains(TOKENIZER_KEY),
        "{err}"
    );
    // A diffusers folder brings its own (tokenizer_3/ for SD3).
    let found = locate_tokenizer(&data(), None).unwrap();
    assert!(
        found.ends_with("tokenizer_3/tokenizer.json"),
        "{}",
        found.display()
    );
    assert_eq!(
        locate_tokenizer(&single, Some(&data().join("tokenizer_3"))).unwrap(),
        found
    );
}

#[test]
fn non_t5_weights_and_foreign_token_ids_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.safetensors");
    let t = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("text_model.embeddings.weight", &t)], &file).unwrap();
    let err = T5Weights::from_path(&file).err().unwrap().to_string();
    assert!(
        err.contains("no T5 encoder weights") && !err.contains('\n'),
        "{err}"
    );

    let encoder = encoder(Kind::Float);
    let too_big = T5Tokens {
        ids: vec![32000, 1],
        weights: vec![1.0, 1.0],
    };
    let err = encoder.encode(&[too_big]).unwrap_err().to_string();
    assert!(err.contains("32000") && err.contains("vocabulary"), "{err}");
}

/// The real T5 v1.1 tokenizer (32 100 pieces, SentencePiece `Precompiled` normalizer): set
/// HIRESFIX_T5_TOKENIZER to its tokenizer.json (scripts/t5_tokenizer_from_pypi.py writes one;
/// 2.4 MB, not committed). Compared with transformers' ids in real_tokenizer.json.
#[test]
fn real_t5_tokenizer_matches_transformers_when_given() {
    let Some(path) = std::env::var_os("HIRESFIX_T5_TOKENIZER") else {
        eprintln!("HIRESFIX_T5_TOKENIZER unset: real T5 tokenizer not checked");
        return;
    };
    let tok = T5Tokenizer::from_file(Path::new(&path)).unwrap();
    for case in read_json("real_tokenizer.json")["cases"]
        .as_array()
        .unwrap()
    {
        let prompt = case["prompt"].as_str().unwrap();
        let parsed = fragments(&case["parsed"]);
        let got = tok.tokens(&parsed, 256).unwrap();
        assert_eq!(got.ids, ids(&case["ids"]), "{prompt:?}");
        assert_eq!(
            tok.plain(prompt, 256).unwrap().ids,
            ids(&case["whole"]),
            "{prompt:?}"
        );
    }
}
