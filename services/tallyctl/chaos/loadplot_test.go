//go:build chaos

package chaos

import (
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strconv"
	"strings"
)

// A small line-chart renderer for the load report, on the standard library only: stacked
// panels sharing the x axis (seconds), axes with numeric ticks, a legend, a dashed marker
// at the end of the load's schedule. Text uses a built-in 3x5 pixel font scaled by fontScale.

type point struct{ X, Y float64 } // Y NaN = no value

type series struct {
	name string
	col  color.RGBA
	pts  []point
}

type panel struct {
	title  string
	logY   bool // logarithmic y axis (decades, ticks at 1, 2, 5)
	series []series
}

var (
	colRed    = color.RGBA{0xd6, 0x27, 0x28, 0xff}
	colBlue   = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	colGreen  = color.RGBA{0x2c, 0xa0, 0x2c, 0xff}
	colOrange = color.RGBA{0xff, 0x7f, 0x0e, 0xff}
	colAxis   = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colGrid   = color.RGBA{0xe0, 0xe0, 0xe0, 0xff}
	colMarker = color.RGBA{0x90, 0x90, 0x90, 0xff}
)

// Plot geometry, in pixels.
const (
	plotWidth    = 1200
	panelHeight  = 340
	plotTitleH   = 40
	marginLeft   = 90
	marginRight  = 30
	panelTop     = 50 // room for the panel title and legend
	panelBottom  = 50 // room for the x tick labels
	fontScale    = 2
	glyphW       = 3
	glyphH       = 5
	glyphAdvance = (glyphW + 1) * fontScale
)

// writePlot draws the panels over x in [0, xMax] with a marker at loadEnd and writes a PNG.
func writePlot(path, title string, xMax, loadEnd float64, panels []panel) error {
	img := image.NewRGBA(image.Rect(0, 0, plotWidth, plotTitleH+panelHeight*len(panels)))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	drawText(img, marginLeft, 14, title, colAxis)
	xMax = niceCeil(math.Max(xMax, 1))
	for i, p := range panels {
		top := plotTitleH + i*panelHeight
		drawPanel(img, image.Rect(marginLeft, top+panelTop, plotWidth-marginRight, top+panelHeight-panelBottom), p, xMax, loadEnd)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func drawPanel(img *image.RGBA, r image.Rectangle, p panel, xMax, loadEnd float64) {
	yMax, yMin := 0.0, math.Inf(1)
	for _, s := range p.series {
		for _, pt := range s.pts {
			if !math.IsNaN(pt.Y) {
				yMax = math.Max(yMax, pt.Y)
				if pt.Y > 0 {
					yMin = math.Min(yMin, pt.Y)
				}
			}
		}
	}
	xStep := niceStep(xMax / 10)
	px := func(x float64) int { return r.Min.X + int(math.Round(x/xMax*float64(r.Dx()))) }
	var py func(y float64) int
	var yTicks []float64
	if p.logY {
		lo := math.Floor(math.Log10(math.Min(yMin, math.Max(yMax, 1))))
		hi := math.Max(math.Ceil(math.Log10(math.Max(yMax, 1))), lo+1)
		py = func(y float64) int {
			v := math.Log10(math.Max(y, math.Pow(10, lo)))
			return r.Max.Y - int(math.Round((v-lo)/(hi-lo)*float64(r.Dy())))
		}
		for e := lo; e <= hi; e++ {
			for _, m := range []float64{1, 2, 5} {
				if v := m * math.Pow(10, e); math.Log10(v) <= hi+1e-9 {
					yTicks = append(yTicks, v)
				}
			}
		}
	} else {
		yStep := niceStep(math.Max(yMax, 1) / 5)
		yTop := math.Ceil(math.Max(yMax, 1)/yStep) * yStep
		py = func(y float64) int { return r.Max.Y - int(math.Round(y/yTop*float64(r.Dy()))) }
		for y := 0.0; y <= yTop+yStep/2; y += yStep {
			yTicks = append(yTicks, y)
		}
	}

	// Grid and tick labels.
	for _, y := range yTicks {
		yy := py(y)
		hline(img, r.Min.X, r.Max.X, yy, colGrid)
		lbl := tickLabel(y)
		drawText(img, r.Min.X-8-len(lbl)*glyphAdvance, yy-glyphH*fontScale/2, lbl, colAxis)
	}
	for x := 0.0; x <= xMax+xStep/2; x += xStep {
		xx := px(x)
		vline(img, xx, r.Min.Y, r.Max.Y, colGrid)
		lbl := tickLabel(x)
		drawText(img, xx-len(lbl)*glyphAdvance/2, r.Max.Y+8, lbl, colAxis)
	}
	drawText(img, r.Max.X-len("TIME (S)")*glyphAdvance, r.Max.Y+26, "TIME (S)", colAxis)
	// Load end marker (dashed).
	if loadEnd > 0 && loadEnd < xMax {
		xx := px(loadEnd)
		for y := r.Min.Y; y < r.Max.Y; y += 8 {
			vline(img, xx, y, min(y+4, r.Max.Y), colMarker)
		}
		drawText(img, xx+4, r.Min.Y+4, "END OF SCHEDULE", colMarker)
	}
	// Axes.
	hline(img, r.Min.X, r.Max.X, r.Max.Y, colAxis)
	vline(img, r.Min.X, r.Min.Y, r.Max.Y, colAxis)
	// Series.
	for _, s := range p.series {
		var prev *point
		for i := range s.pts {
			pt := s.pts[i]
			if math.IsNaN(pt.Y) {
				prev = nil
				continue
			}
			if prev != nil {
				thickLine(img, px(prev.X), py(prev.Y), px(pt.X), py(pt.Y), s.col)
			} else {
				thickLine(img, px(pt.X), py(pt.Y), px(pt.X), py(pt.Y), s.col)
			}
			prev = &s.pts[i]
		}
	}
	// Title and legend above the panel.
	drawText(img, r.Min.X, r.Min.Y-34, p.title, colAxis)
	lx := r.Max.X
	for i := len(p.series) - 1; i >= 0; i-- {
		s := p.series[i]
		lx -= len(s.name)*glyphAdvance + 34
		fill(img, image.Rect(lx, r.Min.Y-30, lx+20, r.Min.Y-24), s.col)
		drawText(img, lx+26, r.Min.Y-32, s.name, colAxis)
	}
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}

func niceCeil(v float64) float64 {
	s := niceStep(v / 10)
	return math.Ceil(v/s) * s
}

func tickLabel(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "K"
	default:
		return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64)
	}
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

// thickLine draws a 2-pixel Bresenham line.
func thickLine(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		img.SetRGBA(x0+1, y0, c)
		img.SetRGBA(x0, y0+1, c)
		img.SetRGBA(x0+1, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x0 += sx
		} else {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// drawText draws s (upper-cased; unknown characters as blanks) with its top-left at x, y.
func drawText(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for _, ch := range strings.ToUpper(s) {
		if g, ok := font3x5[ch]; ok {
			for row := 0; row < glyphH; row++ {
				for col := 0; col < glyphW; col++ {
					if g[row][col] == '#' {
						fill(img, image.Rect(x+col*fontScale, y+row*fontScale, x+(col+1)*fontScale, y+(row+1)*fontScale), c)
					}
				}
			}
		}
		x += glyphAdvance
	}
}

// font3x5 is a 3x5 pixel font: digits, letters and the punctuation the plot uses.
var font3x5 = map[rune][glyphH]string{
	'0': {"###", "#.#", "#.#", "#.#", "###"}, '1': {".#.", "##.", ".#.", ".#.", "###"},
	'2': {"###", "..#", "###", "#..", "###"}, '3': {"###", "..#", "###", "..#", "###"},
	'4': {"#.#", "#.#", "###", "..#", "..#"}, '5': {"###", "#..", "###", "..#", "###"},
	'6': {"###", "#..", "###", "#.#", "###"}, '7': {"###", "..#", "..#", "..#", "..#"},
	'8': {"###", "#.#", "###", "#.#", "###"}, '9': {"###", "#.#", "###", "..#", "###"},
	'A': {".#.", "#.#", "###", "#.#", "#.#"}, 'B': {"##.", "#.#", "##.", "#.#", "##."},
	'C': {".##", "#..", "#..", "#..", ".##"}, 'D': {"##.", "#.#", "#.#", "#.#", "##."},
	'E': {"###", "#..", "##.", "#..", "###"}, 'F': {"###", "#..", "##.", "#..", "#.."},
	'G': {".##", "#..", "#.#", "#.#", ".##"}, 'H': {"#.#", "#.#", "###", "#.#", "#.#"},
	'I': {"###", ".#.", ".#.", ".#.", "###"}, 'J': {"..#", "..#", "..#", "#.#", ".#."},
	'K': {"#.#", "#.#", "##.", "#.#", "#.#"}, 'L': {"#..", "#..", "#..", "#..", "###"},
	'M': {"#.#", "###", "###", "#.#", "#.#"}, 'N': {"##.", "#.#", "#.#", "#.#", "#.#"},
	'O': {".#.", "#.#", "#.#", "#.#", ".#."}, 'P': {"##.", "#.#", "##.", "#..", "#.."},
	'Q': {".#.", "#.#", "#.#", "##.", ".##"}, 'R': {"##.", "#.#", "##.", "#.#", "#.#"},
	'S': {".##", "#..", ".#.", "..#", "##."}, 'T': {"###", ".#.", ".#.", ".#.", ".#."},
	'U': {"#.#", "#.#", "#.#", "#.#", "###"}, 'V': {"#.#", "#.#", "#.#", "#.#", ".#."},
	'W': {"#.#", "#.#", "###", "###", "#.#"}, 'X': {"#.#", "#.#", ".#.", "#.#", "#.#"},
	'Y': {"#.#", "#.#", ".#.", ".#.", ".#."}, 'Z': {"###", "..#", ".#.", "#..", "###"},
	'.': {"...", "...", "...", "...", ".#."}, '-': {"...", "...", "###", "...", "..."},
	'/': {"..#", "..#", ".#.", "#..", "#.."}, '(': {".#.", "#..", "#..", "#..", ".#."},
	')': {".#.", "..#", "..#", "..#", ".#."}, ':': {"...", ".#.", "...", ".#.", "..."},
	'%': {"#.#", "..#", ".#.", "#..", "#.#"}, ',': {"...", "...", "...", ".#.", "#.."},
	'=': {"...", "###", "...", "###", "..."}, '+': {"...", ".#.", "###", ".#.", "..."},
	'>': {"#..", ".#.", "..#", ".#.", "#.."}, ' ': {"...", "...", "...", "...", "..."},
}
