package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Service-account files kubelet mounts into every pod.
const (
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// ResyncPeriod is how often Run reconciles the whole pod list against the
// daemon's sandboxes: it retries failed actions and detaches sandboxes
// whose pods vanished unseen.
const ResyncPeriod = 5 * time.Minute

// NewClientset returns a client-go clientset for the API server at api,
// trusting the PEM roots in caFile ("" for the system roots) and sending the
// bearer token in tokenFile ("" for none; re-read when it rotates).
func NewClientset(api, caFile, tokenFile string) (kubernetes.Interface, error) {
	cfg := &rest.Config{Host: api, BearerTokenFile: tokenFile, TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
		UserAgent: "sluice-kube-watch"}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// InClusterClientset returns a clientset from the pod's environment
// (KUBERNETES_SERVICE_HOST/PORT) and its service-account token and CA.
func InClusterClientset() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not running in a Kubernetes pod (use --kube-api): %w", err)
	}
	cfg.UserAgent = "sluice-kube-watch"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// fromAPI converts a client-go pod to the part the reconciler reads.
func fromAPI(p *corev1.Pod) (Pod, error) {
	// The reconciler's Pod mirrors the API's JSON field names; a JSON
	// round trip keeps one definition of that mapping.
	data, err := json.Marshal(p)
	if err != nil {
		return Pod{}, err
	}
	var out Pod
	if err := json.Unmarshal(data, &out); err != nil {
		return Pod{}, err
	}
	return out, nil
}

// Run watches the pods of node through a client-go shared informer (list,
// then watch, relisting when the watch expires) and applies the
// reconciler's actions until ctx is done. At the first sync and every
// ResyncPeriod it reconciles the whole list against the daemon's
// sandboxes. Failed actions are logged and retried on the pod's next event
// and at the next resync.
func Run(ctx context.Context, cs kubernetes.Interface, node string, ap *Applier, log *slog.Logger) error {
	r := NewReconciler(node)
	// mu serialises the reconciler and the daemon calls: informer
	// notifications and the periodic sync.
	var mu sync.Mutex
	apply := func(acts []Action) {
		for _, a := range acts {
			if err := ap.Apply(ctx, a); err != nil {
				r.Failed(a)
				log.Warn("pod action failed", "op", a.Op, "sandbox", a.Sandbox, "pod", a.Pod, "err", err)
				continue
			}
			log.Info("pod action", "op", a.Op, "sandbox", a.Sandbox, "pod", a.Pod, "policy", a.Policy, "reason", a.Reason)
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + node }))
	pods := factory.Core().V1().Pods()
	inf := pods.Informer()
	_ = inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		if ctx.Err() == nil {
			log.Warn("pod watch", "err", err)
		}
	})
	handle := func(typ string, obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		pod, err := fromAPI(p)
		if err != nil {
			log.Warn("pod watch: unreadable pod", "pod", p.Namespace+"/"+p.Name, "err", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		apply(r.Handle(Event{Type: typ, Object: pod}))
	}
	resync := func() error {
		objs, err := pods.Lister().List(labels.Everything())
		if err != nil {
			return err
		}
		list := make([]Pod, 0, len(objs))
		for _, p := range objs {
			pod, err := fromAPI(p)
			if err != nil {
				return err
			}
			list = append(list, pod)
		}
		mu.Lock()
		defer mu.Unlock()
		have, err := ap.Daemon.List(ctx)
		if err != nil {
			return fmt.Errorf("listing the daemon's sandboxes: %w", err)
		}
		apply(r.Sync(list, have))
		return nil
	}

	// The handler sees every listed pod (ADDED) and every later change;
	// the first sync after it has seen the list detaches stale sandboxes
	// and retries what failed.
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { handle("ADDED", obj) },
		UpdateFunc: func(_, obj any) { handle("MODIFIED", obj) },
		DeleteFunc: func(obj any) { handle("DELETED", obj) },
	})
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced, reg.HasSynced) {
		return nil // ctx done
	}
	backoff := time.Second
	for {
		err := resync()
		if err == nil {
			break
		}
		log.Warn("pod watch: first sync", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
	t := time.NewTicker(ResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := resync(); err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("pod watch: resync", "err", err)
			}
		}
	}
}
