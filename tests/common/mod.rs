//! Helpers shared by the cross-crate tests.

use balora::adapters::AdapterSlots;
use balora::burn::tensor::{Tensor, TensorData};
use balora_testkit::pseudo_random;

/// Move every `lora_B` off its start by `amount` of seeded noise (a stand-in for training),
/// keeping each factor a trainable leaf where the device records gradients.
pub fn perturb_slots<M: AdapterSlots>(model: &mut M, amount: f64) {
    let mut seed = 90;
    model.visit_slots_mut(&mut |_, slot| {
        if let Some(ad) = &mut slot.adapter {
            seed += 1;
            let s = seed;
            ad.lora_b = ad.lora_b.clone().map(|b| {
                let dims = b.dims();
                let n = Tensor::<2>::from_data(
                    TensorData::new(pseudo_random(dims[0] * dims[1], s), dims),
                    &b.device(),
                );
                let moved = (b + n.mul_scalar(amount)).detach();
                if moved.device().is_autodiff() {
                    moved.require_grad()
                } else {
                    moved
                }
            });
        }
    });
}
