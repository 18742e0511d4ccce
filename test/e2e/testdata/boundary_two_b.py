# Sandbox B of TestBoundaryTwoSandboxes: holds a proxied keep-alive
# connection to allowed.test (its requests carry B's credential), announces
# itself, and waits until A is done before using the connection again.
import http.client, os, sys, time

port, pub, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPSConnection("allowed.test", port, timeout=10)
c.request("GET", "/b1")
print("B1", c.getresponse().read().decode().strip(), flush=True)
open(os.path.join(pub, "b-ready"), "w").close()
deadline = time.time() + 60
while not os.path.exists(os.path.join(pub, "a-done")) and time.time() < deadline:
    time.sleep(0.05)
c.request("GET", "/b2")
print("B2", c.getresponse().read().decode().strip(), flush=True)
