import torch, time
from effdnn.quant.kernels import ops
torch.set_num_threads(1)
def best(f,r=7):
    f(); ts=[]
    for _ in range(r):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return min(ts)*1e3
for (B,C,H,N,s) in [(256,16,28,16,1),(256,32,14,32,1),(256,64,7,64,1)]:
    x=torch.randn(B,C,H,H); plus=torch.rand(N,C,3,3)>0.5
    pan,wtap=ops.conv_weight_layout(plus)
    one=torch.ones(C); zero=torch.zeros(C); sc=torch.rand(N)
    f=lambda ks: ops.xnor_conv2d(x,one,zero,pan,wtap,N,(3,3),(s,s),(1,1),(1,1),sc,None,ks)
    w=torch.randn(N,C,3,3)
    print(B,C,H,N, "k", f"{best(lambda: f(True)):.2f}", "nok", f"{best(lambda: f(False)):.2f}", "relu", f"{best(lambda: torch.relu(x)):.2f}", "conv fp32", f"{best(lambda: torch.nn.functional.conv2d(x,w,None,1,1)):.2f}")
