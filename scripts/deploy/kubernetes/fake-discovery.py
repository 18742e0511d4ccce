#!/usr/bin/env python3
"""A stand-in Kubernetes API server for `kubectl apply --dry-run=client`.

It serves only discovery (/api, /apis and the resource lists of the kinds in
these manifests) and answers 404 for every object, so kubectl maps each
document to its resource and reports "created (dry run)". It binds
127.0.0.1 on a free port, prints the port, and logs requests to argv[1].
It serves no OpenAPI schema: validate.sh checks the schema separately.
"""
import json, sys, http.server, re
R = {
 "/api/v1": ("v1", [("namespaces","Namespace",False),("serviceaccounts","ServiceAccount",True),("configmaps","ConfigMap",True),("secrets","Secret",True),("pods","Pod",True)]),
 "/apis/apps/v1": ("apps/v1", [("daemonsets","DaemonSet",True)]),
 "/apis/rbac.authorization.k8s.io/v1": ("rbac.authorization.k8s.io/v1", [("clusterroles","ClusterRole",False),("clusterrolebindings","ClusterRoleBinding",False)]),
}
log = open(sys.argv[1], "a")
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code); self.send_header("Content-Type","application/json"); self.send_header("Content-Length",str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        p = self.path.split("?")[0]
        log.write("GET %s\n" % self.path); log.flush()
        if p == "/api":
            return self.send(200, {"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]})
        if p == "/apis":
            gs = []
            for gv in ("apps/v1","rbac.authorization.k8s.io/v1"):
                g, v = gv.split("/")
                gs.append({"name":g,"versions":[{"groupVersion":gv,"version":v}],"preferredVersion":{"groupVersion":gv,"version":v}})
            return self.send(200, {"kind":"APIGroupList","apiVersion":"v1","groups":gs})
        if p in R:
            gv, res = R[p]
            return self.send(200, {"kind":"APIResourceList","apiVersion":"v1","groupVersion":gv,"resources":[
                {"name":n,"singularName":k.lower(),"namespaced":ns,"kind":k,"verbs":["create","delete","get","list","patch","update","watch"]} for n,k,ns in res]})
        # any object: not found, so apply reports "created (dry run)"
        return self.send(404, {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not found","reason":"NotFound","code":404})
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
