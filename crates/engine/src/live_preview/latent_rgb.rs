//! ComfyUI's "Latent2RGB" preview (`latent_preview.Latent2RGBPreviewer`): each latent cell's
//! channels mixed to RGB by a per-family 4 × 3 matrix plus a bias, one pixel per cell. The
//! factors are ComfyUI's `latent_rgb_factors` / `latent_rgb_factors_bias` of
//! `comfy/latent_formats.py` (`SD15` for SD 1.x and 2.x, `SDXL`), copied into
//! `tests/data/live_preview/latent_rgb_factors.json` by `scripts/make_latent_rgb_reference.py`
//! and checked against it by the test below.
use host_api::tch::{Device, Kind, Tensor};

/// A family's factors: rows are latent channels, columns R, G, B; and the bias per colour.
pub struct Factors {
    pub matrix: [[f32; 3]; 4],
    pub bias: [f32; 3],
}

/// ComfyUI's `SD15` (no bias).
pub static SD15: Factors = Factors {
    matrix: [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    bias: [0.0; 3],
};

/// ComfyUI's `SDXL`.
pub static SDXL: Factors = Factors {
    matrix: [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

/// The factors of a model family; `None` where ComfyUI has none for it (latents that are not
/// SD's or SDXL's four channels).
pub fn factors(family: &str) -> Option<&'static Factors> {
    let f = family.to_ascii_lowercase();
    match f.as_str() {
        _ if f.starts_with("sdxl") => Some(&SDXL),
        _ if f.starts_with("sd1") || f.starts_with("sd2") => Some(&SD15),
        _ => None,
    }
}

/// The first image of `latent` (`[B, 4, h, w]`, scaled as the sampler runs it) as an RGB
/// image `[3, h, w]` in about -1..1 (CPU, f32); `None` for another shape.
pub fn latent_to_rgb(latent: &Tensor, factors: &Factors) -> Option<Tensor> {
    let size = latent.size();
    let [_, 4, h, w] = size.as_slice() else {
        return None;
    };
    let (h, w) = (*h, *w);
    let m: Vec<f32> = factors.matrix.iter().flatten().copied().collect();
    let m = Tensor::from_slice(&m).view([4, 3]);
    let bias = Tensor::from_slice(&factors.bias).view([3, 1]);
    let x = latent
        .narrow(0, 0, 1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([4, h * w]);
    // (3, 4) × (4, h·w) + bias: ComfyUI's `linear(x0.movedim(0, -1), factors.T, bias)`.
    Some((m.transpose(0, 1).matmul(&x) + bias).view([3, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/live_preview/latent_rgb_factors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn latent_rgb_factors_are_comfyuis() {
        let r = reference();
        for (name, ours, family) in [("SD15", &SD15, "sd1"), ("SDXL", &SDXL, "sdxl")] {
            let f = &r["formats"][name];
            for (c, row) in ours.matrix.iter().enumerate() {
                for (k, v) in row.iter().enumerate() {
                    let want = f["latent_rgb_factors"][c][k].as_f64().unwrap();
                    assert_eq!(f64::from(*v), f64::from(want as f32), "{name} [{c}][{k}]");
                }
            }
            let bias: Vec<f64> = match f["latent_rgb_factors_bias"].as_array() {
                Some(b) => b.iter().map(|v| v.as_f64().unwrap()).collect(),
                None => vec![0.0; 3],
            };
            for (k, v) in ours.bias.iter().enumerate() {
                assert_eq!(f64::from(*v), f64::from(bias[k] as f32), "{name} bias {k}");
            }
            assert!(std::ptr::eq(factors(family).unwrap(), ours));
        }
        assert!(std::ptr::eq(factors("sd2").unwrap(), &SD15));
        assert!(factors("sd3").is_none());
    }

    #[test]
    fn each_cell_is_the_matrix_times_its_channels_plus_the_bias() {
        // One image of 1 × 2 cells: cell 0 all zeros, cell 1 channel 3 = 1.
        let latent =
            Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).view([1, 4, 1, 2]);
        let rgb = latent_to_rgb(&latent, &SDXL).unwrap();
        assert_eq!(rgb.size(), [3, 1, 2]);
        let v = Vec::<f32>::try_from(rgb.flatten(0, -1)).unwrap();
        // Planes R, G, B of (cell 0, cell 1).
        let want = [
            0.1084,
            0.1084 - 0.3165,
            -0.0175,
            -0.0175 - 0.2492,
            -0.0011,
            -0.0011 - 0.2188,
        ];
        for (got, want) in v.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
        let bad = Tensor::zeros([1, 16, 2, 2], (Kind::Float, Device::Cpu));
        assert!(latent_to_rgb(&bad, &SD15).is_none());
    }
}
