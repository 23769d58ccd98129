#include "framework/train/optimizer.h"

#include <cmath>

namespace recsys::train {

OptimizerOptions OptimizerOptions::from_config(const config::Reader& r) {
  OptimizerOptions o;
  std::string type = r.choice("type", "adam", {"adam", "adagrad", "sgd"});
  o.kind = type == "adam" ? OptimizerKind::kAdam
           : type == "adagrad" ? OptimizerKind::kAdagrad : OptimizerKind::kSgd;
  o.lr = r.get<double>("lr", type == "adam" ? 1e-3 : (type == "adagrad" ? 0.05 : 0.1));
  o.beta1 = r.get<double>("beta1", o.beta1);
  o.beta2 = r.get<double>("beta2", o.beta2);
  o.eps = r.get<double>("eps", o.eps);
  o.initial_accumulator = r.get<double>("initial_accumulator", o.initial_accumulator);
  o.momentum = r.get<double>("momentum", o.momentum);
  o.weight_decay = r.get<double>("weight_decay", o.weight_decay);
  o.grad_clip = r.get<double>("grad_clip", o.grad_clip);
  if (!(o.lr > 0)) r.fail("lr", "must be positive");
  if (o.beta1 < 0 || o.beta1 >= 1) r.fail("beta1", "must be in [0, 1)");
  if (o.beta2 < 0 || o.beta2 >= 1) r.fail("beta2", "must be in [0, 1)");
  if (!(o.eps > 0)) r.fail("eps", "must be positive");
  if (o.weight_decay < 0) r.fail("weight_decay", "must be >= 0");
  if (o.grad_clip < 0) r.fail("grad_clip", "must be >= 0 (0 disables clipping)");
  if (o.momentum < 0 || o.momentum >= 1) r.fail("momentum", "must be in [0, 1)");
  return o;
}

Optimizer::Optimizer(std::vector<torch::Tensor> params, OptimizerOptions options)
    : params_(std::move(params)), options_(options) {
  for (auto& p : params_) {
    torch::Tensor s1, s2;
    switch (options_.kind) {
      case OptimizerKind::kAdam:
        s1 = torch::zeros_like(p);
        s2 = torch::zeros_like(p);
        break;
      case OptimizerKind::kAdagrad:
        s1 = torch::full_like(p, options_.initial_accumulator);
        break;
      case OptimizerKind::kSgd:
        if (options_.momentum > 0) s1 = torch::zeros_like(p);
        break;
    }
    state1_.push_back(s1);
    state2_.push_back(s2);
  }
}

void Optimizer::zero_grad() {
  for (auto& p : params_) {
    auto& g = p.mutable_grad();
    if (!g.defined()) continue;
    if (g.is_sparse()) {
      g = torch::Tensor();  // a fresh sparse gradient is produced by the next backward
    } else {
      g.detach_();
      g.zero_();
    }
  }
}

void Optimizer::step() {
  torch::NoGradGuard no_grad;
  ++steps_;
  std::vector<torch::Tensor> grads(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& g = params_[i].grad();
    if (!g.defined()) continue;
    grads[i] = g.is_sparse() ? g.coalesce() : g;
  }
  if (options_.grad_clip > 0) {
    torch::Tensor total;
    for (auto& g : grads) {
      if (!g.defined()) continue;
      auto sq = (g.is_sparse() ? g._values() : g).pow(2).sum();
      total = total.defined() ? total + sq : sq;
    }
    if (total.defined()) {
      double norm = std::sqrt(total.item<double>());
      if (norm > options_.grad_clip) {
        double scale = options_.grad_clip / (norm + 1e-6);
        for (auto& g : grads)
          if (g.defined()) g = g * scale;
      }
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!grads[i].defined()) continue;
    if (grads[i].is_sparse())
      update_sparse(i, params_[i], grads[i]);
    else
      update_dense(i, params_[i], grads[i]);
  }
}

void Optimizer::update_dense(size_t i, torch::Tensor& p, torch::Tensor g) {
  const auto& o = options_;
  if (o.weight_decay > 0) g = g.add(p, o.weight_decay);
  switch (o.kind) {
    case OptimizerKind::kAdam: {
      auto& m = state1_[i];
      auto& v = state2_[i];
      m.mul_(o.beta1).add_(g, 1 - o.beta1);
      v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
      double bc1 = 1 - std::pow(o.beta1, static_cast<double>(steps_));
      double bc2 = 1 - std::pow(o.beta2, static_cast<double>(steps_));
      auto denom = (v.sqrt() / std::sqrt(bc2)).add_(o.eps);
      p.addcdiv_(m, denom, -o.lr / bc1);
      break;
    }
    case OptimizerKind::kAdagrad: {
      auto& s = state1_[i];
      s.addcmul_(g, g, 1.0);
      p.addcdiv_(g, s.sqrt().add_(1e-10), -o.lr);
      break;
    }
    case OptimizerKind::kSgd: {
      if (o.momentum > 0) {
        auto& b = state1_[i];
        b.mul_(o.momentum).add_(g);
        p.add_(b, -o.lr);
      } else {
        p.add_(g, -o.lr);
      }
      break;
    }
  }
}

void Optimizer::update_sparse(size_t i, torch::Tensor& p, const torch::Tensor& g) {
  const auto& o = options_;
  auto rows = g._indices()[0];
  auto vals = g._values();
  if (rows.numel() == 0) return;
  auto prow = p.index_select(0, rows);
  if (o.weight_decay > 0) vals = vals + o.weight_decay * prow;
  switch (o.kind) {
    case OptimizerKind::kAdam: {
      auto m = state1_[i].index_select(0, rows).mul_(o.beta1).add_(vals, 1 - o.beta1);
      auto v = state2_[i].index_select(0, rows).mul_(o.beta2).addcmul_(vals, vals, 1 - o.beta2);
      state1_[i].index_copy_(0, rows, m);
      state2_[i].index_copy_(0, rows, v);
      double bc1 = 1 - std::pow(o.beta1, static_cast<double>(steps_));
      double bc2 = 1 - std::pow(o.beta2, static_cast<double>(steps_));
      auto denom = (v.sqrt_() / std::sqrt(bc2)).add_(o.eps);
      prow.addcdiv_(m, denom, -o.lr / bc1);
      break;
    }
    case OptimizerKind::kAdagrad: {
      auto s = state1_[i].index_select(0, rows).addcmul_(vals, vals, 1.0);
      state1_[i].index_copy_(0, rows, s);
      prow.addcdiv_(vals, s.sqrt().add_(1e-10), -o.lr);
      break;
    }
    case OptimizerKind::kSgd:
      prow.add_(vals, -o.lr);
      break;
  }
  p.index_copy_(0, rows, prow);
}

void Optimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("optimizer.steps", torch::tensor(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) archive.write("optimizer.s1." + std::to_string(i), state1_[i]);
    if (state2_[i].defined()) archive.write("optimizer.s2." + std::to_string(i), state2_[i]);
  }
}

void Optimizer::load(torch::serialize::InputArchive& archive) {
  // A fresh tensor per read: InputArchive::read set_()s a defined tensor onto the stored one,
  // which fails when dtype or size differ from the previous read.
  torch::Tensor steps;
  archive.read("optimizer.steps", steps);
  steps_ = steps.item<int64_t>();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) {
      torch::Tensor t;
      archive.read("optimizer.s1." + std::to_string(i), t);
      state1_[i].copy_(t);
    }
    if (state2_[i].defined()) {
      torch::Tensor t;
      archive.read("optimizer.s2." + std::to_string(i), t);
      state2_[i].copy_(t);
    }
  }
}

std::vector<torch::Tensor> Optimizer::state_tensors() const {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) out.push_back(state1_[i].clone());
    if (state2_[i].defined()) out.push_back(state2_[i].clone());
  }
  return out;
}

}  // namespace recsys::train
