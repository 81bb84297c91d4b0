//! Every BA-LoRA worked example of docs/methods.md, "Worked examples", in f64 on flex, to
//! ≤ 1e-9 absolute.

use balora_losses::{
    AdaptiveLambda, BaLoraLoss, KlReduction, Lambdas, MaskMode, Preset, RegularizerConfig,
    Schedule, SvdMode, SvdObjective, Task, TokenMask, nlg, nlu,
};
use balora_testkit::{f64_device, tensor64, values};
use burn::tensor::{Device, Tensor};

const ZF: [f64; 6] = [1.0, 2.0, 3.0, 0.5, -1.0, 2.0];
const ZP: [f64; 6] = [1.0, 1.0, 1.0, 0.0, -1.0, 2.0];

fn scalar(t: Tensor<1>) -> f64 {
    values(t)[0]
}

#[track_caller]
fn close(got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-9, "got {got:.17}, want {want:.17}");
}

fn nlu_logits(d: &Device) -> (Tensor<2>, Tensor<2>) {
    (tensor64(&ZF, [2, 3], d), tensor64(&ZP, [2, 3], d))
}

fn nlg_logits(d: &Device, b: usize, t: usize) -> (Tensor<3>, Tensor<3>) {
    (tensor64(&ZF, [b, t, 3], d), tensor64(&ZP, [b, t, 3], d))
}

#[test]
fn nlu_paper_terms() {
    let d = f64_device();
    let (f, p) = nlu_logits(&d);
    close(
        scalar(nlu::consistency(f.clone(), p).unwrap()),
        0.03275994242630512,
    );
    close(
        scalar(nlu::diversity(f.clone()).unwrap().unwrap()),
        1.9166666666666667,
    );
    let svd = |k, obj| scalar(nlu::svd(f.clone(), k, obj, 1e-10).unwrap());
    close(svd(1, SvdObjective::RatioToSum), -0.6854419916150354);
    close(svd(2, SvdObjective::RatioToSum), -0.9999999999828);
    close(svd(5, SvdObjective::RatioToSum), -0.9999999999828);
    close(svd(1, SvdObjective::TopKSum), -3.987630261861874);
    close(svd(2, SvdObjective::TopKSum), -5.817604276618205);
}

fn full_mask(t: &Tensor<3>) -> TokenMask {
    let [b, tt, _] = t.dims();
    TokenMask::new(&vec![0; b * tt], [b, tt], MaskMode::None, t).unwrap()
}

#[test]
fn nlg_paper_terms() {
    let d = f64_device();
    let (f, p) = nlg_logits(&d, 1, 2);
    let m = full_mask(&f);
    let kl = nlg::consistency(f.clone(), p.clone(), &m, KlReduction::BatchSum, 1.0);
    close(scalar(kl.unwrap().unwrap()), 0.3233613531848448);
    let div = |eps| scalar(nlg::diversity(f.clone(), &m, 0, eps).unwrap().unwrap());
    close(div(1e-10), -0.7269900929596067);
    close(div(0.0), -0.7269900932596066);
    let svd = |k| {
        let c = RegularizerConfig::paper(Task::Nlg).with_svd_k(k);
        scalar(nlg::svd(f.clone(), &m, &c).unwrap().unwrap())
    };
    close(svd(1), -0.6854419916150354);
    close(svd(3), -0.9999999999828);
    // the same logits as B = 2, T = 1: the batch-sum KL halves
    let (f2, p2) = nlg_logits(&d, 2, 1);
    let kl = nlg::consistency(f2.clone(), p2, &full_mask(&f2), KlReduction::BatchSum, 1.0);
    close(scalar(kl.unwrap().unwrap()), 0.1616806765924224);
}

#[test]
fn nlg_paper_total_regulariser() {
    let d = f64_device();
    let (f, p) = nlg_logits(&d, 1, 2);
    let loss = BaLoraLoss::new(RegularizerConfig::paper(Task::Nlg).with_svd_k(1), 10).unwrap();
    let zero = Tensor::<1>::zeros([1], (&d, burn::tensor::DType::F64));
    let out = loss.nlg(0, zero, f, &[0, 0], || p).unwrap();
    close(scalar(out.loss), -2.5430509173090106e-4);
    assert_eq!(
        out.terms.lambdas,
        Lambdas {
            consistency: 1e-4,
            diversity: 3e-4,
            svd: 1e-4
        }
    );
}

fn iclr(tau: f64, top_k: usize, k: usize, objective: SvdObjective) -> RegularizerConfig {
    RegularizerConfig::iclr2026()
        .with_temperature(tau)
        .with_top_k_entropy(top_k)
        .with_svd_k(k)
        .with_svd_objective(objective)
}

fn iclr_terms(labels: [i64; 2], c: &RegularizerConfig) -> [Option<f64>; 3] {
    let d = f64_device();
    let (f, p) = nlg_logits(&d, 1, 2);
    let m = TokenMask::new(&labels, [1, 2], c.mask, &f).unwrap();
    let kl = nlg::consistency(f.clone(), p, &m, c.kl_reduction, c.temperature).unwrap();
    let div = nlg::diversity(f.clone(), &m, c.top_k_entropy, c.entropy_eps).unwrap();
    let svd = nlg::svd(f, &m, c).unwrap();
    [kl.map(scalar), div.map(scalar), svd.map(scalar)]
}

#[test]
fn nlg_iclr2026_terms() {
    let sum = SvdObjective::RatioToSum;
    let frob = SvdObjective::RatioToFrobenius;
    let [c, dv, s] = iclr_terms([5, 7], &iclr(1.0, 0, 1, sum));
    close(c.unwrap(), 0.1616806765924224);
    close(dv.unwrap(), -0.7269900932596066);
    close(s.unwrap(), -0.6854419916268176);
    let [c, dv, _] = iclr_terms([5, 7], &iclr(2.0, 0, 1, sum));
    close(c.unwrap(), 0.17491673463090512);
    close(dv.unwrap(), -0.7269900932596066);
    let [c, dv, _] = iclr_terms([5, 7], &iclr(2.0, 2, 1, sum));
    close(c.unwrap(), 0.17491673463090512);
    close(dv.unwrap(), -0.5286273362902524);
    close(
        iclr_terms([5, 7], &iclr(1.0, 0, 1, frob))[2].unwrap(),
        -0.9088652866993524,
    );
    close(
        iclr_terms([5, 7], &iclr(1.0, 0, 10, frob))[2].unwrap(),
        -1.3259550739549313,
    );
    close(iclr_terms([5, 7], &iclr(1.0, 0, 2, sum))[2].unwrap(), -1.0);
}

#[test]
fn nlg_iclr2026_masked_first_position() {
    let sum = SvdObjective::RatioToSum;
    let [c, dv, s] = iclr_terms([-100, 7], &iclr(1.0, 0, 1, sum));
    close(c.unwrap(), 0.014367677408574142);
    close(dv.unwrap(), -0.6215846046792743);
    assert!(s.is_none(), "N = 1: the SVD term is skipped");
    let [c, dv, _] = iclr_terms([-100, 7], &iclr(2.0, 2, 1, sum));
    close(c.unwrap(), 0.023203941367310632);
    close(dv.unwrap(), -0.4750515636922869);
}

#[test]
fn shifted_mask_selects_positions_that_predict_labels() {
    let d = f64_device();
    let like = Tensor::<3>::zeros([2, 3, 1], &d);
    let labels = [-100, 5, 6, -100, -100, 9];
    let un = TokenMask::new(&labels, [2, 3], MaskMode::ResponseUnshifted, &like).unwrap();
    let sh = TokenMask::new(&labels, [2, 3], MaskMode::ResponseShifted, &like).unwrap();
    assert_eq!(un.rows, vec![1, 2, 5]);
    assert_eq!(sh.rows, vec![0, 1, 4]);
}

#[test]
fn adaptive_lambda_uses_the_teacher_entropy() {
    let d = f64_device();
    let (f, p) = nlg_logits(&d, 1, 2);
    let c = RegularizerConfig::iclr2026()
        .with_schedule_consistency(Schedule::Constant)
        .with_adaptive_consistency(Some(AdaptiveLambda::new()));
    let h = nlg::teacher_entropy(p.clone(), &full_mask(&p), 2.0)
        .unwrap()
        .unwrap();
    close(h, 1.0022857726);
    let loss = BaLoraLoss::new(c, 1000).unwrap();
    let zero = Tensor::<1>::zeros([1], (&d, burn::tensor::DType::F64));
    let out = loss.nlg(0, zero, f, &[5, 7], || p).unwrap();
    close(out.terms.lambdas.consistency, 0.0044728039);
}

#[test]
fn presets_fill_the_documented_fields() {
    let paper = RegularizerConfig::paper(Task::Nlu);
    assert_eq!(
        (
            paper.lambda_consistency,
            paper.lambda_diversity,
            paper.lambda_svd
        ),
        (1e-4, 4e-4, 1e-4)
    );
    assert_eq!(
        (paper.svd_k, paper.svd_objective),
        (3, SvdObjective::TopKSum)
    );
    let paper = RegularizerConfig::paper(Task::Nlg);
    assert_eq!(paper.svd_mode, SvdMode::PerSample);
    assert_eq!(paper.lambda_diversity, 3e-4);
    let iclr = RegularizerConfig::iclr2026();
    assert_eq!(iclr.randomized_svd_threshold, Some(4096));
    assert_eq!(
        (iclr.svd_k, iclr.top_k_entropy, iclr.temperature),
        (10, 20, 2.0)
    );
    for c in [
        RegularizerConfig::paper(Task::Nlu),
        RegularizerConfig::paper(Task::Nlg),
        iclr,
    ] {
        c.validate().unwrap();
    }
}

#[test]
fn unknown_combinations_are_rejected_with_a_reason() {
    let err = |c: RegularizerConfig| c.validate().unwrap_err().to_string();
    assert!(
        err(RegularizerConfig::paper(Task::Nlu).with_mask(MaskMode::ResponseShifted))
            .contains("NLU")
    );
    assert!(err(RegularizerConfig::paper(Task::Nlg).with_temperature(2.0)).contains("temperature"));
    assert!(
        err(RegularizerConfig::paper(Task::Nlg).with_mask(MaskMode::ResponseUnshifted))
            .contains("batch-sum")
    );
    assert!(
        err(RegularizerConfig::iclr2026().with_svd_mode(SvdMode::PerSample)).contains("per-sample")
    );
    assert!(err(RegularizerConfig::paper(Task::Nlg).with_svd_k(0)).contains("svd_k"));
    assert!(
        RegularizerConfig::preset(Preset::Iclr2026, Task::Nlu)
            .unwrap_err()
            .to_string()
            .contains("NLG only")
    );
    assert!(
        "paperr"
            .parse::<Preset>()
            .unwrap_err()
            .to_string()
            .contains("paperr")
    );
    // config round-trips through JSON (Burn Config)
    let json = serde_json::to_string(&RegularizerConfig::iclr2026()).unwrap();
    let back: RegularizerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, RegularizerConfig::iclr2026());
}
