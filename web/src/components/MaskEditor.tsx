import { useCallback, useEffect, useRef, useState, type PointerEvent } from "react";

import type { InitImage } from "../form";
import { Field } from "./Field";

/** How many strokes Undo can take back. */
const UNDO_DEPTH = 30;

/**
 * Paint the inpainting mask over the start image: brush, eraser, undo, clear, invert.
 * Painted pixels are repainted by the model; the mask sent is white there, black elsewhere,
 * at the start image's size.
 */
export function MaskEditor(props: { init: InitImage; onMask: (mask: string | null) => void }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const [brush, setBrush] = useState(24);
  const [eraser, setEraser] = useState(false);
  const [undoDepth, setUndoDepth] = useState(0);
  const undo = useRef<ImageData[]>([]);
  const drawing = useRef<{ x: number; y: number } | null>(null);
  const { width, height } = props.init;
  const { onMask } = props;

  const ctx = () => canvas.current?.getContext("2d", { willReadFrequently: true }) ?? null;

  const emit = useCallback(() => {
    const c = ctx();
    if (!c) return;
    const paint = c.getImageData(0, 0, width, height);
    const mask = new ImageData(width, height);
    let any = false;
    for (let i = 0; i < paint.data.length; i += 4) {
      const on = (paint.data[i + 3] ?? 0) > 0;
      any ||= on;
      const v = on ? 255 : 0;
      mask.data[i] = v;
      mask.data[i + 1] = v;
      mask.data[i + 2] = v;
      mask.data[i + 3] = 255;
    }
    if (!any) return onMask(null);
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    out.getContext("2d")?.putImageData(mask, 0, 0);
    onMask(out.toDataURL("image/png"));
  }, [width, height, onMask]);

  // A new start image starts a new mask.
  useEffect(() => {
    ctx()?.clearRect(0, 0, width, height);
    undo.current = [];
    setUndoDepth(0);
    onMask(null);
  }, [props.init.src, width, height, onMask]);

  const remember = () => {
    const c = ctx();
    if (!c) return;
    undo.current.push(c.getImageData(0, 0, width, height));
    if (undo.current.length > UNDO_DEPTH) undo.current.shift();
    setUndoDepth(undo.current.length);
  };

  const point = (e: PointerEvent<HTMLCanvasElement>) => {
    const rect = e.currentTarget.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) * width) / rect.width,
      y: ((e.clientY - rect.top) * height) / rect.height,
    };
  };

  const stroke = (from: { x: number; y: number }, to: { x: number; y: number }) => {
    const c = ctx();
    if (!c) return;
    c.globalCompositeOperation = eraser ? "destination-out" : "source-over";
    c.strokeStyle = "rgb(255, 48, 96)";
    c.fillStyle = "rgb(255, 48, 96)";
    c.lineWidth = brush;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    c.moveTo(from.x, from.y);
    c.lineTo(to.x, to.y);
    c.stroke();
    c.beginPath();
    c.arc(to.x, to.y, brush / 2, 0, Math.PI * 2);
    c.fill();
  };

  const edit = (change: (data: ImageData) => void) => {
    const c = ctx();
    if (!c) return;
    remember();
    const data = c.getImageData(0, 0, width, height);
    change(data);
    c.putImageData(data, 0, 0);
    emit();
  };

  return (
    <section className="mask-editor" aria-label="Mask editor">
      <div className="mask-stage">
        <img src={props.init.src} alt={`Start image: ${props.init.name}`} draggable={false} />
        <canvas
          ref={canvas}
          width={width}
          height={height}
          aria-label="Paint the area to repaint"
          data-testid="mask-canvas"
          onPointerDown={(e) => {
            e.currentTarget.setPointerCapture(e.pointerId);
            remember();
            const p = point(e);
            drawing.current = p;
            stroke(p, p);
          }}
          onPointerMove={(e) => {
            if (!drawing.current) return;
            const p = point(e);
            stroke(drawing.current, p);
            drawing.current = p;
          }}
          onPointerUp={() => {
            if (!drawing.current) return;
            drawing.current = null;
            emit();
          }}
          onPointerCancel={() => {
            drawing.current = null;
            emit();
          }}
        />
      </div>
      <div className="row wrap mask-tools">
        <Field label={<>Brush <output>{brush}px</output></>} inline>
<input type="range" min={2} max={128} value={brush} onChange={(e) => setBrush(Number(e.target.value))} />
</Field>
        <button type="button" aria-pressed={eraser} onClick={() => setEraser((v) => !v)}>
          {eraser ? "Eraser on" : "Eraser"}
        </button>
        <button
          type="button"
          disabled={undoDepth === 0}
          onClick={() => {
            const previous = undo.current.pop();
            setUndoDepth(undo.current.length);
            if (previous) {
              ctx()?.putImageData(previous, 0, 0);
              emit();
            }
          }}
        >
          Undo
        </button>
        <button type="button" onClick={() => edit((d) => d.data.fill(0))}>
          Clear
        </button>
        <button
          type="button"
          onClick={() =>
            edit((d) => {
              for (let i = 0; i < d.data.length; i += 4) {
                const on = (d.data[i + 3] ?? 0) > 0;
                d.data[i] = 255;
                d.data[i + 1] = 48;
                d.data[i + 2] = 96;
                d.data[i + 3] = on ? 0 : 255;
              }
            })
          }
        >
          Invert
        </button>
      </div>
    </section>
  );
}
