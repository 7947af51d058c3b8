import torch, time, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
import effdnn, effdnn.techniques
from effdnn.models import build_model
from effdnn.quant.packed import pack_model, PackedBinaryLayer
torch.set_num_threads(1)
torch.manual_seed(0)
fp=build_model("resnet",1,10,(28,28),depth=20,width=16).eval()
x=torch.randn(256,1,28,28)
q=effdnn.Experiment(fp,{"quantize":{"method":"xnor"}},data=[x[:64]]).model.eval()
p=pack_model(q)
with torch.inference_mode():
    p(x)
    from torch.profiler import profile
    with profile() as pr:
        p(x)
print(pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
import time
tt={}
def pre(m, i): m._t=time.perf_counter()
def post(m, i, o): tt[m._n]=tt.get(m._n,0)+time.perf_counter()-m._t
for n,m in p.named_modules():
    if isinstance(m, PackedBinaryLayer):
        m._n=n; m.register_forward_pre_hook(pre); m.register_forward_hook(post)
with torch.inference_mode():
    t=time.perf_counter(); p(x); print("total", time.perf_counter()-t)
    tt.clear(); t=time.perf_counter(); p(x); print("total", time.perf_counter()-t)
for n,v in tt.items():
    m=p.get_submodule(n); print(n, m.k, m.out_features, m.stride, f"{v*1e3:.1f} ms")
print(sum(tt.values()))
