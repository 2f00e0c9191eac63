// gitopshealth reads one Kubernetes object as JSON on stdin and prints, as one JSON line, the
// health verdicts of the two GitOps readers, computed by their own code:
//
//   - "kstatus": sigs.k8s.io/cli-utils pkg/kstatus/status.Compute, the library Flux's health
//     checks (kustomize-controller `wait`/`healthChecks`, helm-controller) use;
//   - "argocd": the Argo CD health script given with --lua, run by github.com/yuin/gopher-lua (the
//     interpreter Argo CD embeds) the way Argo CD runs a resource customization: only the base,
//     package and table libraries open, the object as the global `obj`, the script's returned
//     table read as {status, message}, a status outside Argo CD's set read as Unknown. Before any
//     script, Argo CD answers Progressing "Pending deletion" for an object with a
//     deletionTimestamp (gitops-engine's GetResourceHealth); that is done here too.
//
// Written for the e2e tests (e2e/tests/packaging.rs); not a copy of either project's code.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	script := flag.String("lua", "", "Argo CD health script (e.g. manifests/gitops/argocd-health.lua)")
	flag.Parse()
	if err := run(*script, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gitopshealth:", err)
		os.Exit(1)
	}
}

func run(scriptPath string, in io.Reader, out io.Writer) error {
	if scriptPath == "" {
		return fmt.Errorf("--lua is required")
	}
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	var obj map[string]interface{}
	dec := json.NewDecoder(in)
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("stdin: expected one JSON object: %v", err)
	}
	obj = normalise(obj).(map[string]interface{})
	u := &unstructured.Unstructured{Object: obj}
	ks, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("kstatus: %v", err)
	}
	argo, err := argoHealth(u, string(script))
	if err != nil {
		return fmt.Errorf("argocd health script: %v", err)
	}
	return json.NewEncoder(out).Encode(map[string]verdict{
		"kstatus": {Status: ks.Status.String(), Message: ks.Message},
		"argocd":  argo,
	})
}

// normalise turns json.Number into int64 or float64, as the API machinery's JSON decoding does
// for unstructured objects (kstatus reads generations as int64).
func normalise(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			t[k] = normalise(x)
		}
		return t
	case []interface{}:
		for i, x := range t {
			t[i] = normalise(x)
		}
		return t
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	}
	return v
}

var argoStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

func argoHealth(u *unstructured.Unstructured, script string) (verdict, error) {
	if u.GetDeletionTimestamp() != nil {
		return verdict{Status: "Progressing", Message: "Pending deletion"}, nil
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return verdict{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(script); err != nil {
		return verdict{}, err
	}
	ret := l.Get(-1)
	table, ok := ret.(*lua.LTable)
	if !ok {
		return verdict{}, fmt.Errorf("the script returned a %s, expected a table", ret.Type())
	}
	v := verdict{}
	if s, ok := table.RawGetString("status").(lua.LString); ok {
		v.Status = string(s)
	}
	if m, ok := table.RawGetString("message").(lua.LString); ok {
		v.Message = string(m)
	}
	if !argoStatuses[v.Status] {
		return verdict{Status: "Unknown", Message: fmt.Sprintf("invalid health status %q", v.Status)}, nil
	}
	return v, nil
}

// toLua converts decoded JSON to Lua values: objects and arrays to tables (arrays 1-based),
// numbers to numbers, null to nil.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch t := v.(type) {
	case map[string]interface{}:
		table := l.NewTable()
		for k, x := range t {
			table.RawSetString(k, toLua(l, x))
		}
		return table
	case []interface{}:
		table := l.NewTable()
		for _, x := range t {
			table.Append(toLua(l, x))
		}
		return table
	case string:
		return lua.LString(t)
	case bool:
		return lua.LBool(t)
	case int64:
		return lua.LNumber(t)
	case float64:
		return lua.LNumber(t)
	}
	return lua.LNil
}
