package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/muster-dev/muster/podapi"
)

// maxReviewBytes bounds a request body: the apiserver stores objects of at
// most 1.5 MiB, and its review wraps one or two of them.
const maxReviewBytes = 8 << 20

var podKind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}

type handler struct {
	cfg Config
	log *slog.Logger
}

// NewHandler serves the webhook at POST /mutate (admission.k8s.io/v1
// AdmissionReview in and out). cfg should have passed Validate; log may
// be nil.
func NewHandler(cfg Config, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{cfg: cfg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", h.serveMutate)
	return mux
}

func (h *handler) serveMutate(w http.ResponseWriter, r *http.Request) {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		h.badRequest(w, fmt.Sprintf("Content-Type %q: want application/json", r.Header.Get("Content-Type")))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		h.badRequest(w, "read the request body: "+err.Error())
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.badRequest(w, "decode the AdmissionReview: "+err.Error())
		return
	}
	if gvk := review.GroupVersionKind(); gvk != admissionv1.SchemeGroupVersion.WithKind("AdmissionReview") {
		h.badRequest(w, fmt.Sprintf("got apiVersion %q kind %q: want admission.k8s.io/v1 AdmissionReview (set admissionReviewVersions: [v1])", review.APIVersion, review.Kind))
		return
	}
	if review.Request == nil {
		h.badRequest(w, "the AdmissionReview has no request")
		return
	}
	resp := h.admit(r.Context(), review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		// Only a programming error gets here: the response is plain data.
		h.log.Error("encode admission response", "err", err)
		http.Error(w, "encode the AdmissionReview response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

func (h *handler) badRequest(w http.ResponseWriter, msg string) {
	h.log.Warn("bad admission request", "reason", msg)
	http.Error(w, msg, http.StatusBadRequest)
}

// admit decides on one request. Anything but the creation of an annotated
// pod is allowed untouched.
func (h *handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind != podKind || req.SubResource != "" || req.Operation != admissionv1.Create {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(&metav1.Status{Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest, Message: "decode the pod: " + err.Error()})
	}
	if pod.Annotations[podapi.AnnotationInject] != "true" {
		return allow
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	log := h.log.With("namespace", pod.Namespace, "pod", podName(&pod))

	m, errs := h.read(ctx, &pod)
	if len(errs) > 0 {
		st := invalid(&pod, errs)
		log.Info("denied pod", "reason", st.Message)
		return deny(st)
	}
	mutated := pod.DeepCopy()
	warnings := h.inject(mutated, m)
	resp := &admissionv1.AdmissionResponse{Allowed: true, Warnings: warnings}
	ops := diff(&pod, mutated)
	if len(ops) == 0 {
		// A reinvocation (IfNeeded) after another plugin changed the pod.
		log.Debug("pod already injected", "group", m.Group)
		return resp
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		log.Error("encode patch", "err", err)
		return deny(&metav1.Status{Code: http.StatusInternalServerError, Reason: metav1.StatusReasonInternalError, Message: "encode the patch: " + err.Error()})
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	log.Info("injected agent", "group", m.Group, "size", m.Size, "runtime", m.Runtime, "patch_ops", len(ops), "warnings", len(warnings))
	return resp
}

func deny(st *metav1.Status) *admissionv1.AdmissionResponse {
	st.Status = metav1.StatusFailure
	return &admissionv1.AdmissionResponse{Allowed: false, Result: st}
}

// invalid is the status of a denied pod: the message lists every field
// error with its path and fix; the details carry them one by one for
// clients that read causes.
func invalid(pod *corev1.Pod, errs field.ErrorList) *metav1.Status {
	st := &metav1.Status{
		Code:    http.StatusUnprocessableEntity,
		Reason:  metav1.StatusReasonInvalid,
		Message: errs.ToAggregate().Error(),
		Details: &metav1.StatusDetails{Kind: "Pod", Name: pod.Name},
	}
	for _, e := range errs {
		if e.Type == field.ErrorTypeInternal {
			// Not the pod's fault: say so, so that clients retry.
			st.Code, st.Reason = http.StatusInternalServerError, metav1.StatusReasonInternalError
		}
		st.Details.Causes = append(st.Details.Causes, metav1.StatusCause{
			Type: metav1.CauseType(e.Type), Message: e.ErrorBody(), Field: e.Field,
		})
	}
	return st
}

// podName is the pod's name, or its generateName prefix with a "*" (the
// apiserver generates the name after admission).
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return strings.TrimSuffix(pod.GenerateName, "-") + "-*"
}
