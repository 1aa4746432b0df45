//! The contact sheet of `hiresfix grid`: the cells in a table on a white ground, column
//! labels above and row labels left, drawn with embedded-graphics' built-in monospace font
//! (nothing to ship or find at run time).
use std::convert::Infallible;

use embedded_graphics::mono_font::{ascii::FONT_10X20, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};

use crate::generate::Rgb8;

/// Space around labels and between cells, in pixels.
const PAD: u32 = 8;
const CHAR_W: u32 = 10;
const CHAR_H: u32 = 20;
/// Row labels longer than this are cut (the sheet should stay mostly image).
const MAX_ROW_LABEL: usize = 32;

/// A composed sheet and where each cell's top-left corner is (`origins[row][col]`).
pub struct Sheet {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub origins: Vec<Vec<(u32, u32)>>,
}

/// `rows[r][c]` placed in slots as large as the largest cell; `columns` labels the columns,
/// `row_labels` the rows (empty: no row label band).
pub fn compose(rows: &[Vec<Rgb8>], columns: &[String], row_labels: &[String]) -> Sheet {
    let cells = rows.iter().flatten();
    let slot_w = cells.clone().map(|c| c.0).max().unwrap_or(0);
    let slot_h = cells.map(|c| c.1).max().unwrap_or(0);
    let row_chars = row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let left = match row_chars {
        0 => 0,
        n => n.min(MAX_ROW_LABEL) as u32 * CHAR_W + 2 * PAD,
    };
    let top = CHAR_H + 2 * PAD;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let width = left + cols * (slot_w + PAD) + PAD;
    let height = top + rows.len() as u32 * (slot_h + PAD);
    let mut sheet = Sheet {
        width,
        height,
        rgb: vec![255; (width * height * 3) as usize],
        origins: Vec::new(),
    };
    let column_chars = (slot_w.saturating_sub(PAD) / CHAR_W) as usize;
    for (c, label) in columns.iter().enumerate() {
        let x = left + PAD + c as u32 * (slot_w + PAD);
        sheet.label(x, PAD, &fit(label, column_chars));
    }
    for (r, row) in rows.iter().enumerate() {
        let y = top + r as u32 * (slot_h + PAD);
        if let Some(label) = row_labels.get(r) {
            sheet.label(PAD, y + PAD, &fit(label, MAX_ROW_LABEL));
        }
        let mut origins = Vec::new();
        for (c, cell) in row.iter().enumerate() {
            let x = left + PAD + c as u32 * (slot_w + PAD);
            sheet.paste(x, y, cell);
            origins.push((x, y));
        }
        sheet.origins.push(origins);
    }
    sheet
}

/// `text` cut to `chars` characters (ending in `..` when cut).
fn fit(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let kept: String = text.chars().take(chars.saturating_sub(2)).collect();
    format!("{kept}..")
}

impl Sheet {
    fn paste(&mut self, x: u32, y: u32, (w, h, rgb): &Rgb8) {
        for row in 0..*h {
            let from = (row * w * 3) as usize;
            let to = (((y + row) * self.width + x) * 3) as usize;
            let len = (w * 3) as usize;
            self.rgb[to..to + len].copy_from_slice(&rgb[from..from + len]);
        }
    }

    fn label(&mut self, x: u32, y: u32, text: &str) {
        let style = MonoTextStyle::new(&FONT_10X20, Rgb888::BLACK);
        let at = Point::new(x as i32, y as i32);
        // Drawing onto the in-memory canvas cannot fail.
        let _ = Text::with_baseline(text, at, style, Baseline::Top).draw(self);
    }
}

impl OriginDimensions for Sheet {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Sheet {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, color) in pixels {
            let (Ok(x), Ok(y)) = (u32::try_from(p.x), u32::try_from(p.y)) else {
                continue;
            };
            if x < self.width && y < self.height {
                let i = ((y * self.width + x) * 3) as usize;
                self.rgb[i..i + 3].copy_from_slice(&[color.r(), color.g(), color.b()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dark_pixels(sheet: &Sheet, x0: u32, y0: u32, w: u32, h: u32) -> usize {
        let mut n = 0;
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let i = ((y * sheet.width + x) * 3) as usize;
                n += usize::from(sheet.rgb[i] < 128);
            }
        }
        n
    }

    #[test]
    fn cells_are_placed_and_labels_drawn() {
        let cell = |v: u8| (64, 48, vec![v; 64 * 48 * 3]);
        let rows = vec![vec![cell(10), cell(200)], vec![cell(90), cell(160)]];
        let columns = ["cfg=5".to_owned(), "cfg=7".to_owned()];
        let row_labels = ["seed=1".to_owned(), "seed=2".to_owned()];
        let sheet = compose(&rows, &columns, &row_labels);
        assert_eq!(
            sheet.origins[1][1],
            (
                6 * CHAR_W + 2 * PAD + PAD + 64 + PAD,
                CHAR_H + 2 * PAD + 48 + PAD
            )
        );
        for (r, row) in rows.iter().enumerate() {
            for (c, (w, h, rgb)) in row.iter().enumerate() {
                let (x, y) = sheet.origins[r][c];
                let i = ((y * sheet.width + x) * 3) as usize;
                assert_eq!(sheet.rgb[i], rgb[0]);
                let j = (((y + h - 1) * sheet.width + x + w - 1) * 3) as usize;
                assert_eq!(sheet.rgb[j], rgb[rgb.len() - 1]);
            }
        }
        // Each label is ink in its band; the ground between is untouched.
        for c in 0..2 {
            let (x, _) = sheet.origins[0][c];
            assert!(
                dark_pixels(&sheet, x, PAD, 64, CHAR_H) > 40,
                "column {c} label"
            );
        }
        for r in 0..2 {
            let (_, y) = sheet.origins[r][0];
            assert!(
                dark_pixels(&sheet, PAD, y + PAD, 6 * CHAR_W, CHAR_H) > 40,
                "row {r} label"
            );
        }
        assert_eq!(dark_pixels(&sheet, 0, 0, sheet.width, PAD), 0);
        assert_eq!(fit("pass.2.denoise=0.45", 8), "pass.2..");
    }
}
