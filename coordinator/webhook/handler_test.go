package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// review is an AdmissionReview as kube-apiserver 1.37 sends it for a pod
// created by the StatefulSet controller (trimmed of nothing the webhook
// could care about).
const review = `{
  "kind": "AdmissionReview",
  "apiVersion": "admission.k8s.io/v1",
  "request": {
    "uid": "0b1e4c8e-93b8-4f5e-a3a5-6a0a2d2c9f11",
    "kind": {"group": "", "version": "v1", "kind": "Pod"},
    "resource": {"group": "", "version": "v1", "resource": "pods"},
    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
    "name": "llama-1",
    "namespace": "serving",
    "operation": "CREATE",
    "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller", "groups": ["system:serviceaccounts"]},
    "object": {
      "kind": "Pod", "apiVersion": "v1",
      "metadata": {
        "name": "llama-1", "namespace": "serving",
        "labels": {"muster.dev/group": "llama", "apps.kubernetes.io/pod-index": "1"},
        "annotations": {"muster.dev/inject": "true", "muster.dev/size": "SIZE"}
      },
      "spec": {
        "containers": [{
          "name": "model", "image": "pytorch/pytorch:2.4.0",
          "command": ["python3", "serve.py"],
          "resources": {}, "terminationMessagePath": "/dev/termination-log",
          "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
        }],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst", "securityContext": {},
        "schedulerName": "default-scheduler", "enableServiceLinks": true
      },
      "status": {}
    },
    "oldObject": null,
    "dryRun": false,
    "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
  }
}`

func post(t *testing.T, srv *httptest.Server, contentType, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := srv.Client().Post(srv.URL+"/mutate", contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

func TestHandlerHTTP(t *testing.T) {
	var logs bytes.Buffer
	srv := httptest.NewServer(NewHandler(testConfig(), slog.New(slog.NewTextHandler(&logs, nil))))
	defer srv.Close()

	t.Run("injects", func(t *testing.T) {
		resp, body := post(t, srv, "application/json", strings.Replace(review, "SIZE", "4", 1))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s %q: %s", resp.Status, resp.Header.Get("Content-Type"), body)
		}
		// The field names the apiserver reads, checked on the wire.
		var wire struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Response   struct {
				UID       string `json:"uid"`
				Allowed   bool   `json:"allowed"`
				PatchType string `json:"patchType"`
				Patch     []byte `json:"patch"` // base64 on the wire
			} `json:"response"`
		}
		if err := json.Unmarshal(body, &wire); err != nil {
			t.Fatal(err)
		}
		r := wire.Response
		if wire.APIVersion != "admission.k8s.io/v1" || wire.Kind != "AdmissionReview" || r.UID != "0b1e4c8e-93b8-4f5e-a3a5-6a0a2d2c9f11" || !r.Allowed || r.PatchType != "JSONPatch" {
			t.Fatalf("response %s: want an allowed v1 AdmissionReview with the request's uid and a JSONPatch", body)
		}
		var ops []operation
		if err := json.Unmarshal(r.Patch, &ops); err != nil || len(ops) == 0 {
			t.Fatalf("patch %s: %v", r.Patch, err)
		}
		var in admissionv1.AdmissionReview
		json.Unmarshal([]byte(strings.Replace(review, "SIZE", "4", 1)), &in)
		pt := admissionv1.PatchTypeJSONPatch
		checkInjected(t, testConfig(), applyPatch(t, in.Request.Object.Raw, &admissionv1.AdmissionResponse{Patch: r.Patch, PatchType: &pt}))
		if !strings.Contains(logs.String(), "injected agent") || !strings.Contains(logs.String(), "pod=llama-1") {
			t.Errorf("log %q: want one line for the injected pod", logs.String())
		}
	})

	t.Run("denies", func(t *testing.T) {
		resp, body := post(t, srv, "application/json; charset=utf-8", strings.Replace(review, "SIZE", "two", 1))
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &out); err != nil || resp.StatusCode != http.StatusOK || out.Response == nil {
			t.Fatalf("%s %s: %v", resp.Status, body, err)
		}
		want := `metadata.annotations[muster.dev/size]: Invalid value: "two": must be a positive whole number (the number of pods in the group)`
		if r := out.Response; r.Allowed || r.Result == nil || r.Result.Message != want || r.Result.Code != 422 || r.Patch != nil {
			t.Errorf("response %s: want denied (422) with message %q", body, want)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		valid := strings.Replace(review, "SIZE", "4", 1)
		tests := []struct {
			name, method, path, contentType, body string
			code                                  int
			msg                                   string
		}{
			{"GET", http.MethodGet, "/mutate", "", "", http.StatusMethodNotAllowed, ""},
			{"other path", http.MethodPost, "/validate", "application/json", valid, http.StatusNotFound, ""},
			{"not JSON content", http.MethodPost, "/mutate", "text/plain", valid, http.StatusBadRequest, `Content-Type "text/plain": want application/json`},
			{"no content type", http.MethodPost, "/mutate", "", valid, http.StatusBadRequest, "want application/json"},
			{"garbage", http.MethodPost, "/mutate", "application/json", "{not json", http.StatusBadRequest, "decode the AdmissionReview"},
			{"empty body", http.MethodPost, "/mutate", "application/json", "", http.StatusBadRequest, "decode the AdmissionReview"},
			{"v1beta1", http.MethodPost, "/mutate", "application/json", strings.Replace(valid, "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), http.StatusBadRequest, "want admission.k8s.io/v1 AdmissionReview"},
			{"no kind", http.MethodPost, "/mutate", "application/json", strings.Replace(valid, `"kind": "AdmissionReview",`, "", 1), http.StatusBadRequest, "want admission.k8s.io/v1 AdmissionReview"},
			{"no request", http.MethodPost, "/mutate", "application/json", `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}`, http.StatusBadRequest, "has no request"},
			{"too large", http.MethodPost, "/mutate", "application/json", `{"x":"` + strings.Repeat("a", maxReviewBytes) + `"}`, http.StatusBadRequest, "request body too large"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
				if tc.contentType != "" {
					req.Header.Set("Content-Type", tc.contentType)
				}
				resp, err := srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.msg) {
					t.Errorf("%s %q: want %d with %q", resp.Status, body, tc.code, tc.msg)
				}
			})
		}
	})

	// A review that is well formed but carries no pod the webhook can read
	// is answered (HTTP 200) with a denial, never with a crash.
	t.Run("unreadable pod", func(t *testing.T) {
		for _, object := range []string{`"a string"`, `null`, `{"spec":{"containers":"many"}}`} {
			body := `{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":` + object + `}}`
			resp, data := post(t, srv, "application/json", body)
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(data, &out); err != nil || resp.StatusCode != http.StatusOK || out.Response == nil {
				t.Fatalf("object %s: %s %s", object, resp.Status, data)
			}
			if r := out.Response; r.Allowed || r.UID != "u1" || r.Result == nil || r.Result.Code != 400 || !strings.Contains(r.Result.Message, "decode the pod") {
				t.Errorf("object %s: response %s; want denied with code 400 and the decode error", object, data)
			}
		}
	})
}
