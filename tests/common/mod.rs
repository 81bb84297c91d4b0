//! Helpers shared by the cross-crate tests.

use balora::adapters::AdapterSlots;
use balora::burn::tensor::{Tensor, TensorData};
use balora_testkit::pseudo_random;

/// Move every `lora_B` off its start by `amount` of seeded noise (a stand-in for training),
/// keeping each factor a trainable leaf where the device records gradients.
pub fn perturb_slots<M: AdapterSlots>(model: &mut M, amount: f64) {
    let mut seed = 90;
    model.visit_slots_mut(&mut |path, slot| {
        if let Some(ad) = slot.adapter_mut() {
            seed += 1;
            let b = ad.lora_b().val();
            let dims = b.dims();
            let n = Tensor::<2>::from_data(
                TensorData::new(pseudo_random(dims[0] * dims[1], seed), dims),
                &b.device(),
            );
            let a = ad.lora_a().val();
            ad.set_factors(path, a, b + n.mul_scalar(amount)).unwrap();
        }
    });
}
