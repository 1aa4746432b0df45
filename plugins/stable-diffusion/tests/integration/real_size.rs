//! The published architectures, built from the family registry with random weights: their
//! parameter counts equal diffusers' / transformers' (counted by scripts-free constants below,
//! from `UNet2DConditionModel` / `CLIPTextModel(WithProjection)` built with the published
//! configs), and a real-size SDXL UNet runs one step at a 128×128 latent (1024 px) on the CPU
//! in fp32 within this machine's memory. Its time and peak memory are a benchmark:
//! `cargo bench -p hiresfix-sd --bench real_size`.
use hiresfix_sd::families::{sd1, sd2, sdxl};
use hiresfix_sd::random::randomize;
use hiresfix_sd::text::clip::{ClipConfig, ClipTextTransformer};
use hiresfix_sd::unet::{UNetConfig, UNetModel};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn parameters(vs: &VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}

fn unet_parameters(cfg: &UNetConfig) -> i64 {
    let vs = VarStore::new(Device::Cpu);
    UNetModel::new(vs.root() / "unet", cfg).unwrap();
    parameters(&vs)
}

fn text_parameters(cfg: &ClipConfig) -> i64 {
    let vs = VarStore::new(Device::Cpu);
    ClipTextTransformer::new(vs.root() / "text", cfg).unwrap();
    parameters(&vs)
}

#[test]
fn real_size_configs_have_the_published_parameter_counts() {
    // diffusers UNet2DConditionModel with the SD 1.5 / SD 2.1 configs.
    assert_eq!(unet_parameters(&sd1::unet()), 859_520_964);
    assert_eq!(unet_parameters(&sd2::unet()), 865_910_724);
    // transformers CLIPTextModel (ViT-L/14; OpenCLIP ViT-H as diffusers keeps 23 layers) and
    // CLIPTextModelWithProjection (OpenCLIP ViT-bigG, SDXL's text_encoder_2).
    assert_eq!(text_parameters(&sd1::clip_l()), 123_060_480);
    assert_eq!(text_parameters(&sd2::openclip_h()), 340_387_840);
    assert_eq!(text_parameters(&sdxl::openclip_bigg()), 694_659_840);
}

/// At a 64×64 latent (512 px): every block, attention and size path of the 1024 px step runs,
/// at a quarter of its convolutions' time (128×128 took 105 s of the CI's 15 minutes).
#[test]
fn a_real_size_sdxl_unet_runs_one_step_at_a_64x64_latent_on_cpu_in_fp32() {
    let cfg = sdxl::unet();
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNetModel::new(vs.root() / "model" / "diffusion_model", &cfg).unwrap();
    vs.freeze();
    assert_eq!(parameters(&vs), 2_567_463_684, "diffusers' SDXL base UNet");
    randomize(&vs, 0);
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([1, 4, 64, 64], opts);
    let t = Tensor::from_slice(&[500.0f32]);
    let context = Tensor::randn([1, 77, 2048], opts);
    let y = Tensor::randn([1, 2816], opts);
    let out = tch::no_grad(|| unet.forward(&x, &t, &context, Some(&y))).unwrap();
    assert_eq!(out.size(), [1, 4, 64, 64]);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
    let spread = f64::try_from(out.std(true)).unwrap();
    assert!(spread > 1e-3, "the output is not degenerate: std {spread}");
}
