import http.client, json, os, signal, subprocess, sys, time, shutil
N=int(sys.argv[1]); port=18290
data='/tmp/rb/data'; shutil.rmtree(data, ignore_errors=True); os.makedirs(data)
tdir='/tmp/rb/t'; os.makedirs(tdir, exist_ok=True)
open(tdir+'/wg.yaml','w').write("apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmWorkgroup\nmetadata:\n  name: local\nspec:\n  description: x\n  cluster: local\n  maxConcurrentRuns: 1\n")
open(tdir+'/slow.yaml','w').write("apiVersion: science.sneaksanddata.com/v1\nkind: NexusAlgorithmTemplate\nmetadata:\n  name: slow\nspec:\n  container: {image: x, registry: local, versionTag: latest}\n  computeResources: {cpuLimit: '1', memoryLimit: 256Mi}\n  workgroupRef: {name: local, group: science.sneaksanddata.com, kind: NexusAlgorithmWorkgroup}\n  command: sleep\n  args: ['3600']\n  runtimeEnvironment: {deadlineSeconds: 7200}\n")
binp='/work/main/target/debug/nexus'
def start():
    return subprocess.Popen([binp,'standalone','--listen',f'127.0.0.1:{port}','--data',data,'--templates',tdir],stdout=subprocess.DEVNULL,stderr=open('/tmp/rb/log','a'))
def ready(t0):
    while True:
        try:
            c=http.client.HTTPConnection('127.0.0.1',port,timeout=5); c.request('GET','/health/readyz'); r=c.getresponse(); b=r.read().decode()
            if r.status==200: return time.time()-t0, b
        except Exception: pass
        time.sleep(0.02)
p=start(); ready(time.time())
c=http.client.HTTPConnection('127.0.0.1',port)
body=json.dumps({"algorithmParameters":{"x":1}})
for i in range(N):
    c.request('POST','/algorithm/v1/run/slow',body,{'content-type':'application/json'}); r=c.getresponse(); r.read(); assert r.status==202
os.kill(p.pid, signal.SIGKILL); p.wait()
t0=time.time(); p=start(); tr,b=ready(t0)
c=http.client.HTTPConnection('127.0.0.1',port)
t1=time.time(); c.request('POST','/algorithm/v1/run/slow',body,{'content-type':'application/json'}); r=c.getresponse(); r.read(); ta=time.time()-t0
while True:
    c2=http.client.HTTPConnection('127.0.0.1',port,timeout=5); c2.request('GET','/health/readyz'); b2=c2.getresponse().read().decode()
    if b2=='ready': break
    time.sleep(0.05)
trec=time.time()-t0
print(f"recovered_after={trec:.2f}s")
print(f"backlog={N} ready_after={tr:.2f}s readyz='{b}' first_new_202_after={ta:.2f}s status={r.status}")
os.kill(p.pid, signal.SIGTERM); p.wait(timeout=60)
subprocess.run('pkill -9 -f "sleep 3600"',shell=True)
