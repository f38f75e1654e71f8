import type { Dispatch, ReactNode, SetStateAction } from "react";
import { SCHEDULERS, type Model } from "sdq-client";

import { MAX_SIDE, MIN_SIDE, randomSeed, SIZE_PRESETS, withModel, type FormState } from "../form";
import { Field } from "./Field";

/** Prompt and every generation setting; Ctrl+Enter (⌘+Enter) submits from anywhere in it. */
export function ParamsForm(props: {
  form: FormState;
  setForm: Dispatch<SetStateAction<FormState>>;
  models: Model[];
  lastSeed: number | null;
  submitLabel: string;
  /** Whether the server sends step previews (`previews` on a job). */
  previews: boolean;
  canSubmit: boolean;
  onSubmit: () => void;
  /** The start-image controls of img2img and inpainting, shown above the settings. */
  children?: ReactNode;
}) {
  const { form, setForm, models } = props;
  const set = <K extends keyof FormState>(key: K, value: FormState[K]) => setForm((f) => ({ ...f, [key]: value }));
  const num = (v: string, fallback: number) => (v.trim() === "" || !Number.isFinite(Number(v)) ? fallback : Number(v));
  const presetValue = SIZE_PRESETS.find((p) => p.width === form.width && p.height === form.height)?.label ?? "";
  return (
    <form
      className="params"
      aria-label="Generation settings"
      onSubmit={(e) => {
        e.preventDefault();
        if (props.canSubmit) props.onSubmit();
      }}
      onKeyDown={(e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
          e.preventDefault();
          if (props.canSubmit) props.onSubmit();
        }
      }}
    >
      <Field label="Prompt">
<textarea
          name="prompt"
          rows={3}
          value={form.prompt}
          placeholder="a watercolor fox in the snow"
          onChange={(e) => set("prompt", e.target.value)}
          autoFocus
        />
</Field>
      <Field label="Negative prompt">
<textarea
          name="negative_prompt"
          rows={2}
          value={form.negative_prompt}
          placeholder="blurry, low quality"
          onChange={(e) => set("negative_prompt", e.target.value)}
        />
</Field>
      {props.children}
      <div className="grid-2">
        <Field label="Model">
<select
            name="model"
            value={form.model}
            onChange={(e) => {
              const model = models.find((m) => m.id === e.target.value);
              if (model) setForm((f) => withModel(f, model));
            }}
          >
            {models.map((m) => (
              <option key={m.id} value={m.id} disabled={!m.available}>
                {m.id}
                {m.available ? "" : " (not enabled)"}
              </option>
            ))}
          </select>
</Field>
        <Field label="Scheduler">
<select name="scheduler" value={form.scheduler} onChange={(e) => set("scheduler", e.target.value)}>
            <option value="">model default</option>
            {SCHEDULERS.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
</Field>
      </div>
      <div className="grid-3">
        <Field label="Width">
<input
            type="number"
            name="width"
            min={MIN_SIDE}
            max={MAX_SIDE}
            step={8}
            value={form.width}
            onChange={(e) => setForm((f) => ({ ...f, width: num(e.target.value, f.width), sizeChosen: true }))}
          />
</Field>
        <Field label="Height">
<input
            type="number"
            name="height"
            min={MIN_SIDE}
            max={MAX_SIDE}
            step={8}
            value={form.height}
            onChange={(e) => setForm((f) => ({ ...f, height: num(e.target.value, f.height), sizeChosen: true }))}
          />
</Field>
        <Field label="Size preset">
<select
            name="size_preset"
            value={presetValue}
            onChange={(e) => {
              const p = SIZE_PRESETS.find((s) => s.label === e.target.value);
              if (p) setForm((f) => ({ ...f, width: p.width, height: p.height, sizeChosen: true }));
            }}
          >
            <option value="">custom</option>
            {SIZE_PRESETS.map((p) => (
              <option key={p.label} value={p.label}>
                {p.label}
              </option>
            ))}
          </select>
</Field>
      </div>
      <div className="grid-3">
        <Field label="Steps">
<input
            type="number"
            name="steps"
            min={1}
            max={150}
            value={form.steps}
            onChange={(e) => set("steps", num(e.target.value, form.steps))}
          />
</Field>
        <Field label="Guidance">
<input
            type="number"
            name="guidance_scale"
            min={0}
            max={30}
            step={0.5}
            value={form.guidance_scale}
            onChange={(e) => set("guidance_scale", num(e.target.value, form.guidance_scale))}
          />
</Field>
        <Field label="Images">
<input
            type="number"
            name="num_images"
            min={1}
            max={8}
            value={form.num_images}
            onChange={(e) => set("num_images", num(e.target.value, form.num_images))}
          />
</Field>
      </div>
      <fieldset className="seed">
        <legend>Seed</legend>
        <div className="row wrap">
          <input
            type="number"
            name="seed"
            aria-label="Seed"
            min={0}
            value={form.seed}
            disabled={form.randomSeed}
            onChange={(e) => set("seed", Math.max(0, Math.floor(num(e.target.value, form.seed))))}
          />
          <label className="check">
            <input
              type="checkbox"
              name="random_seed"
              checked={form.randomSeed}
              onChange={(e) => set("randomSeed", e.target.checked)}
            />
            <span>Random</span>
          </label>
          <button
            type="button"
            className="ghost"
            onClick={() => setForm((f) => ({ ...f, seed: randomSeed(), randomSeed: false }))}
            title="Pick a new random seed and keep it"
          >
            New seed
          </button>
          <button
            type="button"
            className="ghost"
            disabled={props.lastSeed === null}
            onClick={() => props.lastSeed !== null && setForm((f) => ({ ...f, seed: props.lastSeed ?? f.seed, randomSeed: false }))}
            title="Use the seed of the last job"
          >
            Reuse last seed
          </button>
        </div>
      </fieldset>
      {props.previews && (
        <label className="check">
          <input type="checkbox" name="previews" checked={form.previews} onChange={(e) => set("previews", e.target.checked)} />
          <span>Step previews</span>
        </label>
      )}
      <div className="row submit-row">
        <button type="submit" className="primary" disabled={!props.canSubmit}>
          {props.submitLabel}
        </button>
        <span className="hint">Ctrl+Enter</span>
      </div>
    </form>
  );
}
