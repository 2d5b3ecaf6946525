"""Reference LARS and LAMB, written from the papers, for tests/unit/optimizer_test.cpp.

LARS: You, Gitman, Ginsburg 2017, as the MLPerf ResNet reference implements it (lars_optimizer.py: trust ratio
eta * ||w|| / (||g|| + wd * ||w||), 1 when a norm is 0; batch-norm and bias variables skip the ratio and the decay;
TensorFlow's ApplyMomentum on the lr-scaled gradient). LAMB: You et al. 2019, Algorithm 2 with bias correction,
phi the identity; 1-D parameters skip the ratio and the decay.

  large_batch_reference.py lars|lamb IN OUT [--eta E --momentum M --nesterov --wd W --beta1 B1 --beta2 B2 --eps E]

IN holds w.NAME (initial parameters), g.K.NAME (the gradient at step K) and lr (float64, one per step); OUT gets
w.K.NAME, the parameters after step K. Computed in float64, independently of the C++ code's order of operations.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("opt", choices=["lars", "lamb"])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--eta", type=float, default=0.001)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--nesterov", action="store_true")
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-6)
    a = ap.parse_args()

    t = safetensors_np.load(a.inp)
    lrs = t["lr"].tolist()
    w = {k[2:]: v.double() for k, v in t.items() if k.startswith("w.")}
    state = {n: {} for n in w}
    out = {}
    for k, lr in enumerate(lrs):
        for n in sorted(w):
            g = t["g.%d.%s" % (k, n)].double()
            p = w[n]
            s = state[n]
            layer = p.dim() > 1  # BN and bias parameters are 1-D
            if a.opt == "lars":
                if layer:
                    w_norm, g_norm = torch.norm(p).item(), torch.norm(g).item()
                    trust = a.eta * w_norm / (g_norm + a.wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
                    g = g + a.wd * p
                else:
                    trust = 1.0
                scaled = g * (lr * trust)
                s["mom"] = a.momentum * s.get("mom", torch.zeros_like(p)) + scaled
                p = p - (scaled + a.momentum * s["mom"] if a.nesterov else s["mom"])
            else:
                step = k + 1
                s["m"] = a.beta1 * s.get("m", torch.zeros_like(p)) + (1 - a.beta1) * g
                s["v"] = a.beta2 * s.get("v", torch.zeros_like(p)) + (1 - a.beta2) * g * g
                m_hat = s["m"] / (1 - a.beta1 ** step)
                v_hat = s["v"] / (1 - a.beta2 ** step)
                u = m_hat / (torch.sqrt(v_hat) + a.eps)
                if layer:
                    u = u + a.wd * p
                    w_norm, u_norm = torch.norm(p).item(), torch.norm(u).item()
                    trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                else:
                    trust = 1.0
                p = p - lr * trust * u
            w[n] = p
            out["w.%d.%s" % (k, n)] = p.float()
    safetensors_np.save(a.out, out)


if __name__ == "__main__":
    main()
